"""The warm path in one run: what one avatar costs in compute, overhead, latency and money.

Measured in ONE invocation (≤ 6 min on 2 cores at low load), on a throwaway home and the shared
model cache (Anny already built), each call a real `avatarpipe run --json` process so that its
CPU time and peak RSS come from wait4:

1. a first call in the fresh home (initialises the stores and the instance; not counted), then
   `avatarpipe worker start`, so that every slot of the warm pool is warm (as in production);
2. ``--calls`` warm single-photo calls: wall p50/p95, CPU-seconds, peak RSS, the steps' own
   compute (`timings_s`) and the science inside them (every ``*_seconds`` metric);
3. one batch call ``avatarpipe run P1 … Pn --json``: the time per additional photo
   ((batch wall − single-call p50) / (n − 1)) and its ratio to those photos' own step compute.

Cost per avatar uses stated on-demand prices; the GPU cost is an estimate (method in the table)
until a GPU measurement exists. A queue-throughput row is read from
`benchmarks/queue_throughput.json` when `benchmarks/queue_throughput.py` has written it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: this tree's modules, not an installed copy's

from ops.procstat import cpu_seconds, peak_rss_mb

BEGIN = "<!-- warm_path:begin (benchmarks/warm_path.py) -->"
END = "<!-- warm_path:end -->"
QUEUE_RESULTS = REPO / "benchmarks" / "queue_throughput.json"
C7I_LARGE_USD_PER_H = 0.08925  # us-east-1 Linux on-demand, 2 vCPU / 4 GiB
G4DN_XLARGE_USD_PER_H = 0.526  # us-east-1 Linux on-demand, 1× T4, 4 vCPU
GPU_TORCH_SPEEDUP = 5.0  # assumed T4 speed-up of the torch science (fit, clothing); not measured
BUDGET_GPU_MINUTES = 30.0  # DESIGN.md: 30 GPU-minutes per avatar on a g4dn.xlarge
TORCH_SCIENCE = ("fit_seconds", "clothing_seconds")


@dataclass
class Call:
    """One `avatarpipe run` process: its wall, CPU and memory, and the answers it printed."""

    photos: int
    exit_status: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    load_1m: float
    answers: list[dict[str, Any]] = field(default_factory=list)
    worker_cpu_s: float = 0.0  # CPU the home's warm workers spent during the call
    worker_peak_rss_mb: float = 0.0  # the largest warm worker's peak RSS after the call

    @property
    def compute_s(self) -> float:
        """The steps' own recorded compute, summed over every photo of the call."""
        return sum(v for a in self.answers for v in a.get("timings_s", {}).values() if v)

    def science_s(self) -> dict[str, float]:
        """Every ``*_seconds`` metric the steps recorded, summed over the call's photos."""
        out: dict[str, float] = {}
        for answer in self.answers:
            for metrics in answer.get("metrics", {}).values():
                for key, value in metrics.items():
                    if key.endswith("_seconds") and isinstance(value, int | float):
                        out[key] = out.get(key, 0.0) + float(value)
        return out


def warm_workers(home: Path) -> dict[int, tuple[float, float]]:
    """CPU-seconds and peak RSS (MB, `VmHWM`) of each live warm worker of ``home``, found by the
    pids in its slot files (`$AVATARPIPE_HOME/worker/slot-N.json`): wait4 sees only the CLI."""
    usage: dict[int, tuple[float, float]] = {}
    for state in (home / "worker").glob("slot-*.json"):
        try:
            pid = int(json.loads(state.read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not started
        cpu, hwm = cpu_seconds(pid), peak_rss_mb(pid)
        if cpu is not None and hwm is not None:  # else gone
            usage[pid] = (cpu, hwm)
    return usage


def run_cli(photos: list[Path], home: Path, pythonpath: str) -> Call:
    """One `avatarpipe run PHOTO… --json` process; its answers parsed from stdout (one per line)."""
    env = cli_env(home, pythonpath)
    cli = Path(sys.executable).parent / "avatarpipe"
    before = warm_workers(home)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [str(cli), "run", *map(str, photos), "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    )
    stdout = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    answers = [json.loads(line) for line in stdout.decode().splitlines() if line.strip().startswith("{")]
    after = warm_workers(home)
    worker_cpu = sum(cpu - before.get(pid, (0.0, 0.0))[0] for pid, (cpu, _) in after.items())
    worker_rss = max((rss for _, rss in after.values()), default=0.0)
    return Call(len(photos), proc.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,
                os.getloadavg()[0], answers, worker_cpu, worker_rss)  # fmt: skip


def cli_env(home: Path, pythonpath: str) -> dict[str, str]:
    env = dict(os.environ, AVATARPIPE_HOME=str(home), PYTHONPATH=pythonpath)
    env.pop("DAGSTER_HOME", None)
    return env


def worker_command(home: Path, pythonpath: str, action: str) -> None:
    """`avatarpipe worker start|stop` on ``home``."""
    cli = Path(sys.executable).parent / "avatarpipe"
    subprocess.run([str(cli), "worker", action], env=cli_env(home, pythonpath), capture_output=True, check=False)


def kept(call: Call) -> dict[str, Any]:
    """What the JSON keeps of a call: its numbers, each answer's status, step timings and
    ``*_seconds`` metrics; no ids, paths or other metrics of the (real people's) photos."""
    data = asdict(call)
    data["answers"] = [
        {"status": a.get("status"), "timings_s": a.get("timings_s", {}),
         "metrics": {step: {k: v for k, v in m.items() if k.endswith("_seconds")} for step, m in a.get("metrics", {}).items()}}
        for a in call.answers
    ]  # fmt: skip
    return data


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation; the median of one value is itself."""
    ordered = sorted(values)
    at = (len(ordered) - 1) * q
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def per_step_median(calls: list[Call]) -> dict[str, float]:
    steps: dict[str, list[float]] = {}
    for call in calls:
        for answer in call.answers:
            for step, seconds in answer.get("timings_s", {}).items():
                if seconds is not None:
                    steps.setdefault(step, []).append(seconds)
    return {step: statistics.median(v) for step, v in steps.items()}


def science_median(calls: list[Call]) -> dict[str, float]:
    keys = sorted({k for c in calls for k in c.science_s()})
    return {k: statistics.median([c.science_s().get(k, 0.0) for c in calls]) for k in keys}


def queue_row() -> str:
    """The queue-throughput row, from `benchmarks/queue_throughput.py`'s JSON when it exists."""
    if not QUEUE_RESULTS.is_file():
        return "| throughput through the queue (30 uploads) | not measured here: `benchmarks/queue_throughput.py` (issue 17a) writes it | ≥ 8 /min |"
    data = json.loads(QUEUE_RESULTS.read_text())
    rss = ", ".join(f"{v:.0f}" for v in data.get("peak_rss_mb", {}).get("warm_worker", [])) or "-"
    return (f"| throughput through the queue ({data.get('uploads', '?')} uploads, {data.get('warm_workers')} warm workers, "
            f"{data.get('max_concurrent_runs')} runs at once) | {data.get('sustained_per_min')} avatars/min sustained "
            f"({data.get('overall_per_min')} overall), run latency p50 {data.get('latency_p50_s')} s; peak RSS per warm worker "
            f"{rss} MB | ≥ 8 /min, ≤ 2 GB |")  # fmt: skip


def render(singles: list[Call], batch: Call | None, label: str) -> str:
    """ONE markdown table of the warm path, with the method and the prices used."""
    walls = [c.wall_s for c in singles]
    p50, p95 = statistics.median(walls), percentile(walls, 0.95)
    compute = statistics.median([c.compute_s for c in singles])
    cli_cpu = statistics.median([c.cpu_s for c in singles])
    worker_cpu = statistics.median([c.worker_cpu_s for c in singles])
    cpu = cli_cpu + worker_cpu
    rss = max(c.peak_rss_mb for c in singles)
    worker_rss = max(c.worker_peak_rss_mb for c in singles + ([batch] if batch else []))
    steps = per_step_median(singles)
    science = science_median(singles)
    loads = [c.load_1m for c in singles + ([batch] if batch else [])]
    rows = [
        f"| steps' compute (`timings_s`, sum) | {compute:.1f} s: " + ", ".join(f"{k} {v:.1f}" for k, v in steps.items()) + " | – |",
        "| science inside the steps | " + (", ".join(f"{k.removesuffix('_seconds')} {v:.2f}" for k, v in science.items()) or "–") + " s | – |",
        f"| overhead (wall − compute), single call | {p50 - compute:.1f} s | – |",
        f"| `avatarpipe run` warm, one photo (calls 2…{len(singles) + 1}) | p50 {p50:.1f} s, p95 {p95:.1f} s | ≤ 12 s |",
        f"| CPU-seconds per avatar (single call) | {cpu:.1f} s (CLI process {cli_cpu:.1f}, warm workers {worker_cpu:.1f}) | – |",
        f"| peak RSS | CLI process {rss:.0f} MB; largest warm worker {worker_rss:.0f} MB | ≤ 2 GB per worker |",
    ]
    per_avatar_wall = p50
    if batch is not None and batch.exit_status == 0 and len(batch.answers) == batch.photos and batch.photos > 1:
        extra = (batch.wall_s - p50) / (batch.photos - 1)
        extra_compute = (batch.compute_s - compute) / (batch.photos - 1)
        batch_cpu = batch.cpu_s + batch.worker_cpu_s
        extra_cpu = (batch_cpu - cpu) / (batch.photos - 1)
        ratio = f"{extra / extra_compute:.2f}×" if extra > 0 and extra_compute > 0 else "n/a: the load changed between the calls"
        per_avatar_wall = batch.wall_s / batch.photos
        rows += [
            f"| batch of {batch.photos} in one call | {batch.wall_s:.1f} s wall, {batch_cpu:.1f} CPU-s, CLI peak RSS {batch.peak_rss_mb:.0f} MB | – |",
            f"| per additional photo: wall (ratio to its steps' compute); CPU | {extra:.1f} s ({ratio}); {extra_cpu:.1f} CPU-s against {cpu:.1f} for a single call | ≤ 7 s, ≤ 1.3× |",
            f"| CPU-seconds per avatar (batch) | {batch_cpu / batch.photos:.1f} s | – |",
        ]
    else:
        rows.append("| batch in one call | not available in this code (exit status "
                    f"{batch.exit_status if batch else '–'}) | ≤ 7 s, ≤ 1.3× |")  # fmt: skip
    cpu_cost = per_avatar_wall * C7I_LARGE_USD_PER_H / 3600
    torch_s = sum(science.get(k, 0.0) for k in TORCH_SCIENCE)
    gpu_wall = per_avatar_wall - torch_s + torch_s / GPU_TORCH_SPEEDUP
    gpu_cost = gpu_wall * G4DN_XLARGE_USD_PER_H / 3600
    budget = BUDGET_GPU_MINUTES * 60 * G4DN_XLARGE_USD_PER_H / 3600
    rows += [
        queue_row(),
        f"| cost per avatar, c7i.large-class CPU (${C7I_LARGE_USD_PER_H}/h) | ${cpu_cost:.5f} ({per_avatar_wall:.1f} s of the machine) | – |",
        f"| cost per avatar, g4dn.xlarge (${G4DN_XLARGE_USD_PER_H}/h), estimated | ${gpu_cost:.5f} ({gpu_wall:.1f} s = {gpu_wall / 60:.2f} GPU-min) | budget 30 GPU-min = ${budget:.2f} |",
    ]
    return "\n".join([
        BEGIN,
        "## Warm path (one run of `benchmarks/warm_path.py`)",
        "",
        (f"{label}: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}, no GPU; 1-minute load average during the calls "
        f"{min(loads):.1f}–{max(loads):.1f} (the machine is shared: above {os.cpu_count()} the times are inflated)."),
        "",
        "| what | measured | target (issue 17) |",
        "|---|---|---|",
        *rows,
        "",
        ("Method: each call is one `avatarpipe run --json` process on a fresh home after one first call "
        "(stores and instance initialised), `avatarpipe worker start` (every warm slot up) and a built model cache; wall, CPU (user + system) and peak RSS "
        "from wait4, plus the CPU and peak RSS (`/proc`) of the home's warm workers, which serve the steps. Overhead is the call's wall minus the steps' recorded compute (interpreter start, "
        "imports, model loads, checks, Dagster bookkeeping). Cost per avatar = the machine's time per avatar "
        "(batch wall / photos when the batch ran, else the single-call p50) × the on-demand price (us-east-1). "
        f"The GPU estimate scales the torch science ({', '.join(TORCH_SCIENCE)}) by an assumed "
        f"{GPU_TORCH_SPEEDUP:g}× T4 speed-up and keeps the rest at the measured CPU time; it is not a GPU measurement."),
        END,
    ])  # fmt: skip


def replace_section(path: Path, section: str) -> None:
    """Put ``section`` between the warm-path markers of ``path`` (before the recorded sections
    when it is not there yet); the rest of the file is kept as it is."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        at = text.find("## Recorded with the features")
        text = (text[:at] + section + "\n\n" + text[at:]) if at >= 0 else text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def default_photos() -> list[Path]:
    shared = REPO.parent / "shared" / "data" / "photos"
    extra = [shared / name for name in ("fullbody_01.png", "halfbody_02.jpg") if (shared / name).is_file()]
    return [REPO / "samples" / "person_standing.png", *extra]


def measure(photos: list[Path], calls: int, pythonpath: str) -> tuple[list[Call], Call | None]:
    """The first call (not counted), ``calls`` warm single calls, then one batch of ``photos``."""
    with tempfile.TemporaryDirectory(prefix="avatarpipe-warm-") as tmp:
        home = Path(tmp)
        first = run_cli(photos[:1], home, pythonpath)
        print(f"first call: exit {first.exit_status}, {first.wall_s:.1f}s", file=sys.stderr)
        worker_command(home, pythonpath, "start")  # every slot warm, as the queue benchmark has it
        singles = []
        for i in range(calls):
            call = run_cli(photos[:1], home, pythonpath)
            print(f"warm call {i + 2}: exit {call.exit_status}, {call.wall_s:.1f}s, load {call.load_1m:.1f}", file=sys.stderr)
            singles.append(call)
        batch = run_cli(photos, home, pythonpath) if len(photos) > 1 else None
        if batch:
            print(f"batch of {len(photos)}: exit {batch.exit_status}, {batch.wall_s:.1f}s", file=sys.stderr)
        worker_command(home, pythonpath, "stop")  # not left running in a home about to be removed
    return singles, batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photos", nargs="*", type=Path, help="first photo: the single calls; all: the batch")
    parser.add_argument("--calls", type=int, default=3, help="warm single calls after the first (≥ 3)")
    parser.add_argument("--code", default=str(REPO), help="PYTHONPATH of the code measured (default: this tree)")
    parser.add_argument("--label", default="Measured", help="what the run measures (e.g. 'before')")
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md", help="markdown to update ('-': print)")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "warm_path.json")
    parser.add_argument("--from-json", type=Path, help="render the table from a saved run's JSON, measure nothing")
    args = parser.parse_args(argv)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        singles = [Call(**c) for c in saved["singles"]]
        batch = Call(**saved["batch"]) if saved.get("batch") else None
    else:
        singles, batch = measure(args.photos or default_photos(), max(args.calls, 1), args.code)
    failed = [c for c in singles if c.exit_status != 0 or not c.answers]
    if failed:
        print(f"warm_path: {len(failed)} single call(s) failed; no table written", file=sys.stderr)
        return 1
    section = render(singles, batch, args.label)
    if not args.from_json:
            args.json.write_text(json.dumps({"singles": [kept(c) for c in singles],
                                         "batch": kept(batch) if batch else None}, indent=1, default=str))  # fmt: skip
    if str(args.out) == "-":
        print(section)
    else:
        replace_section(args.out, section)
        print(f"wrote the warm-path table to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
