"""The Dagster code location: `dagster dev -m orchestration.definitions`.

Its `defs` are built at import from the environment's settings (`orchestration.definitions_build`);
code that builds definitions for its own settings imports `build_definitions` from there.
"""

from __future__ import annotations

from orchestration.definitions_build import AVATAR_JOB, REPROCESS_JOB, build_definitions

__all__ = ["AVATAR_JOB", "REPROCESS_JOB", "build_definitions", "defs"]

defs = build_definitions()
