"""The typed configuration (orchestration/config.py) is the only place avatarpipe's code reads
environment variables: `models/` touches none, the other layers read none outside the allowed
modules. An AST scan of the source, so a new `os.environ.get(...)` anywhere fails here.

Allowed, and why:

* `orchestration/config.py` — the configuration itself (and Dagster's own `DAGSTER_HOME`
  bookkeeping: which value avatarpipe derived itself).
* `ops/faults.py` — TEST-ONLY fault hooks (`AVATARPIPE_FAULT_KILL_AT`, `AVATARPIPE_ERASURE_FAULT`):
  not configuration, set only by the reliability tests on their subprocesses.
* Writes are not reads: `orchestration/settings.py` exports what Dagster, MLflow and the model
  caches read themselves, and a few modules `os.environ.setdefault` a third-party library's
  own switch (telemetry off, glog quiet) just before importing it. In `models/` the single such
  write is mediapipe's `GLOG_minloglevel` (it must be set before mediapipe's native code loads).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("models", "assets", "ops", "orchestration", "storage")
READERS = {"orchestration/config.py", "ops/faults.py"}
ASSIGNERS = {"orchestration/settings.py"}  # os.environ[NAME] = value: exports for Dagster/MLflow/caches
MODELS_SETDEFAULT = {("models/keypoints.py", "GLOG_minloglevel")}


def _is_environ(node: ast.AST) -> bool:
    """`os.environ` or a bare `environ` imported from os."""
    return (isinstance(node, ast.Attribute) and node.attr == "environ" and isinstance(node.value, ast.Name)
            and node.value.id == "os") or (isinstance(node, ast.Name) and node.id == "environ")  # fmt: skip


def env_accesses(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, kind, variable) for every use of the process environment in ``path``: kind is
    `read`, `assign` (os.environ[X] = ...), `setdefault`, or `getenv`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "os" and any(a.name in ("environ", "getenv") for a in node.names):
            found.append((node.lineno, "read", None))
        if isinstance(node, ast.Attribute) and node.attr in ("getenv", "getenvb") and isinstance(node.value, ast.Name) and node.value.id == "os":
            found.append((node.lineno, "getenv", None))
        if not _is_environ(node):
            continue
        parent = parents.get(node)
        if isinstance(parent, ast.Attribute) and parent.attr == "setdefault":
            call = parents.get(parent)
            name = call.args[0].value if isinstance(call, ast.Call) and call.args and isinstance(call.args[0], ast.Constant) else None
            found.append((node.lineno, "setdefault", name))
        elif isinstance(parent, ast.Subscript) and isinstance(parent.ctx, ast.Store):
            found.append((node.lineno, "assign", None))
        else:
            found.append((node.lineno, "read", None))
    return found


def _sources() -> list[Path]:
    return sorted(p for layer in LAYERS for p in (ROOT / layer).rglob("*.py"))


def test_models_read_no_environment_variable():
    offences = []
    for path in (ROOT / "models").rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        for line, kind, name in env_accesses(path):
            if not (kind == "setdefault" and (rel, name) in MODELS_SETDEFAULT):
                offences.append(f"{rel}:{line}: {kind} {name or ''}")
    assert offences == [], "models/ takes plain parameters, never the environment:\n" + "\n".join(offences)


def test_only_the_configuration_reads_the_environment():
    offences = []
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        for line, kind, name in env_accesses(path):
            if rel in READERS or kind == "setdefault" or (kind == "assign" and rel in ASSIGNERS):
                continue
            offences.append(f"{rel}:{line}: {kind} {name or ''}")
    assert offences == [], "read it through orchestration/config.py (AppConfig) and pass it down:\n" + "\n".join(offences)


@pytest.mark.parametrize(
    "source, kinds",
    [
        ("import os\nx = os.environ.get('A')\n", ["read"]),
        ("import os\nx = os.getenv('A')\n", ["getenv"]),
        ("from os import environ\nx = environ['A']\n", ["read", "read"]),
        ("import os\nos.environ['A'] = '1'\n", ["assign"]),
        ("import os\nos.environ.setdefault('A', '1')\n", ["setdefault"]),
        ("import os\ndef f(e=os.environ):\n    return e\n", ["read"]),
        ("import os\nx = 'A' in os.environ\n", ["read"]),
    ],
)
def test_the_scan_sees_every_form(tmp_path, source, kinds):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert [kind for _line, kind, _name in env_accesses(path)] == kinds
