"""TEST-ONLY fault hooks: die like a lost machine (SIGKILL, no cleanup) at a named point.

The reliability tests (tests/reliability, tests/compliance) set these variables on the CLI
subprocess they start; nothing else may. They are not configuration - no operator sets them,
`config show` does not list them - so they are read here, the one place besides
`orchestration/config.py` that reads the environment (tests/test_env_reads.py keeps it so).

* `AVATARPIPE_FAULT_KILL_AT=<asset>:stored` / `<asset>:recorded`: at an asset step boundary
  (`assets.steps.fault_point`).
* `AVATARPIPE_ERASURE_FAULT=<step>`: at the start of an erasure step (`ops.erasure`).
"""

from __future__ import annotations

import os
import signal

FAULT_KILL_ENV = "AVATARPIPE_FAULT_KILL_AT"
ERASURE_FAULT_ENV = "AVATARPIPE_ERASURE_FAULT"


def kill_if_armed(variable: str, point: str) -> None:
    """SIGKILL this process when the test-only ``variable`` names ``point``."""
    if os.environ.get(variable) == point:
        os.kill(os.getpid(), signal.SIGKILL)
