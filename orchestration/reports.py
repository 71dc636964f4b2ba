"""Generated Markdown reports (BENCHMARKS.md, EVAL.md) that keep their hand-recorded sections.

`make bench` and `make eval` regenerate their file from a fresh run; measurements recorded with
a feature (which those runs do not repeat) live below `RECORDED_MARKER` and survive the rewrite.
"""

from __future__ import annotations

from pathlib import Path

RECORDED_MARKER = "<!-- recorded: the sections below are kept when this file is regenerated -->"


def write_report(path: Path, generated: str) -> None:
    """Write `generated` to `path`, followed by the recorded sections `path` already holds."""
    kept = ""
    if path.exists():
        old = path.read_text()
        at = old.find(RECORDED_MARKER)
        if at >= 0:
            kept = "\n" + old[at:]
    path.write_text(generated.rstrip("\n") + "\n" + kept)
