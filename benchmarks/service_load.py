"""Load on the HTTP service over loopback: steady status polls plus concurrent uploads.

    python benchmarks/service_load.py [--seconds 60] [--polls-per-s 50] [--uploaders 10] [--photo PATH]

Starts `avatarpipe serve` on a fresh home with `AVATARPIPE_SERVICE_DISPATCH=sensors` (uploads
are taken, stripped, stored and registered as pending — the API's own work — and no pipeline
runs compete for the two cores), then for the given time polls one upload's status at a fixed
rate while each uploader posts the photo again as soon as its last upload was answered. Prints
one JSON object: requests, failures, latency percentiles per kind, throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


@dataclass
class Kind:
    latencies_ms: list[float] = field(default_factory=list)
    failures: int = 0

    def summary(self) -> dict[str, float | int]:
        lat = sorted(self.latencies_ms)
        if not lat:
            return {"requests": 0, "failures": self.failures}
        pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
        return {"requests": len(lat) + self.failures, "failures": self.failures, "p50_ms": round(pick(0.5), 1),
                "p95_ms": round(pick(0.95), 1), "p99_ms": round(pick(0.99), 1), "mean_ms": round(statistics.mean(lat), 1)}  # fmt: skip


@dataclass
class LoadResult:
    seconds: float
    polls_per_s: int
    uploaders: int
    status: dict
    uploads: dict
    uploads_per_s: float

    @property
    def failures(self) -> int:
        return int(self.status["failures"]) + int(self.uploads["failures"])


async def _timed(kind: Kind, call, ok: int) -> None:
    started = time.perf_counter()
    try:
        response = await call()
        if response.status_code != ok:
            kind.failures += 1
            return
    except httpx.HTTPError:
        kind.failures += 1
        return
    kind.latencies_ms.append((time.perf_counter() - started) * 1000)


async def run_load(url: str, key: str, photo: bytes, seconds: float, polls_per_s: int, uploaders: int) -> LoadResult:
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=polls_per_s + uploaders + 10)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30, limits=limits) as client:
        first = await client.post("/v1/uploads", files={"photo": ("p.png", photo, "image/png")})
        first.raise_for_status()
        upload_id = first.json()["upload_id"]
        status, uploads = Kind(), Kind()
        deadline = time.perf_counter() + seconds

        async def poller() -> None:
            pending: set[asyncio.Task] = set()
            tick = 1.0 / polls_per_s
            next_at = time.perf_counter()
            while next_at < deadline:
                pending.add(asyncio.create_task(_timed(status, lambda: client.get(f"/v1/uploads/{upload_id}"), 200)))
                next_at += tick
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            await asyncio.gather(*pending)

        async def uploader() -> None:
            while time.perf_counter() < deadline:
                await _timed(uploads, lambda: client.post("/v1/uploads", files={"photo": ("p.png", photo, "image/png")}), 202)

        started = time.perf_counter()
        await asyncio.gather(poller(), *(uploader() for _ in range(uploaders)))
        elapsed = time.perf_counter() - started
    return LoadResult(seconds=round(elapsed, 1), polls_per_s=polls_per_s, uploaders=uploaders, status=status.summary(),
                      uploads=uploads.summary(), uploads_per_s=round(len(uploads.latencies_ms) / elapsed, 2))  # fmt: skip


def main() -> int:
    from tests.service.conftest import start_service

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--polls-per-s", type=int, default=50)
    parser.add_argument("--uploaders", type=int, default=10)
    parser.add_argument("--photo", type=Path, default=REPO / "samples" / "person_standing.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="avatarpipe-load-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        proc, svc = start_service(home, {"AVATARPIPE_SERVICE_DISPATCH": "sensors"})
        try:
            result = asyncio.run(run_load(svc.url, svc.keys["uploader"], args.photo.read_bytes(), args.seconds,
                                          args.polls_per_s, args.uploaders))  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(json.dumps(asdict(result)))
    return 0 if result.failures == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
