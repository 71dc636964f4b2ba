"""How long loading the Dagster code location takes, and whether it pulls in the science.

Each sample is a fresh interpreter importing `orchestration.definitions` on one warm home (the
registry seeded once before the samples), as `dagster dev`, every run worker and every sensor
tick's code server do. Prints one Markdown table row (median, min, max over the samples).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/code_location_import.py [--samples 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HEAVY = ("torch", "trimesh", "embreex", "mediapipe", "great_expectations")
PROBE = (
    "import json, sys, time\n"
    "start = time.perf_counter()\n"
    "import orchestration.definitions\n"
    "seconds = time.perf_counter() - start\n"
    f"print(json.dumps({{'seconds': seconds, 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
)


def sample(home: str) -> dict:
    env = dict(os.environ, AVATARPIPE_HOME=home)
    env.pop("DAGSTER_HOME", None)
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        sample(home)  # seeds the registry: not a sample
        runs = [sample(home) for _ in range(args.samples)]
    seconds = [r["seconds"] for r in runs]
    heavy = sorted({m for r in runs for m in r["heavy"]})
    load = os.getloadavg()[0]
    print("| median s | min s | max s | heavy modules imported | load avg (1 min) |")
    print("|---|---|---|---|---|")
    print(
        f"| {statistics.median(seconds):.2f} | {min(seconds):.2f} | {max(seconds):.2f} "
        f"| {', '.join(heavy) or 'none'} | {load:.1f} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
