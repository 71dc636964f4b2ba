"""Issue 16: the CLI on click over one application layer, and the layering import-linter checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click

from orchestration.cli import cli, main
from orchestration.commands.common import Reply, emit

REPO = Path(__file__).resolve().parents[2]
COMMANDS = {
    "run", "ingest", "quality-report", "models", "reprocess", "eval", "fsck", "resume", "erase", "audit",
    "verify-erasure", "purge-raw", "export", "privacy-scan", "config", "keys", "serve", "worker",
}  # fmt: skip
NO_ANSWER = {"serve"}  # runs the HTTP service until stopped: nothing to print as JSON


def _leaf_commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    leaves = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            leaves |= _leaf_commands(command, f"{prefix}{name} ")
        else:
            leaves[prefix + name] = command
    return leaves


def test_the_same_commands_each_with_one_json_option():
    assert set(cli.commands) == COMMANDS
    leaves = _leaf_commands(cli)
    assert {"models list", "models register", "models promote", "config show", "keys create"} <= set(leaves)
    for name, command in leaves.items():
        if name in NO_ANSWER:
            continue
        flags = [p for p in command.params if "--json" in getattr(p, "opts", [])]
        assert len(flags) == 1 and flags[0].is_flag, name


def test_emit_prints_one_json_object_on_stdout_and_messages_on_stderr(capfd):
    reply = Reply(1, {"status": "failed", "at": Path("/x")}, lambda a: f"text {a['status']}", message="why")
    assert emit(reply, as_json=True) == 1
    out, err = capfd.readouterr()
    assert json.loads(out) == {"status": "failed", "at": "/x"} and err == "why\n"
    assert emit(reply, as_json=False) == 1
    out, err = capfd.readouterr()
    assert out == "text failed\n" and err == "why\n"
    assert emit(Reply(2, {"error": 1}, str, human_on_stderr=True), as_json=False) == 2
    assert capfd.readouterr() == ("", "{'error': 1}\n")


def test_usage_errors_and_a_bad_configuration_exit_2(monkeypatch, capfd):
    assert main(["no-such-command"]) == 2
    assert main(["fsck", "--grace-s", "soon"]) == 2
    monkeypatch.setenv("AVATARPIPE_COMPUTE_MODE", "quantum")
    assert main(["fsck", "--json"]) == 2
    out, err = capfd.readouterr()
    assert out == "" and "AVATARPIPE_COMPUTE_MODE" in err


def test_stdout_carries_only_the_answer_even_from_file_descriptor_1(avatar_home, capfd):
    """A C library writing to fd 1 during a command lands on stderr (stdout_to_stderr)."""
    from orchestration.commands import common

    def noisy_body(settings) -> Reply:
        os.write(1, b"from C\n")
        print("from Python")
        return Reply(0, {"ok": True})

    command = click.command("noisy")(common.answers(prepare=False)(noisy_body))
    assert command.main(["--json"], standalone_mode=False) == 0
    out, err = capfd.readouterr()
    assert json.loads(out) == {"ok": True} and "from C" in err and "from Python" in err


def test_the_import_linter_contracts_hold():
    """`make lint` runs the same: models/ pure, storage/ and assets/ops/ below orchestration/,
    the CLI above its commands above the application layer, and nothing of Dagster's side
    (the erasure job included) importing a CLI command."""
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=REPO, capture_output=True,
        text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "0 broken" in proc.stdout



def test_starting_the_cli_imports_no_dagster_mlflow_or_gx():
    """Every command is imported when the CLI starts: the heavy libraries stay inside the
    commands that use them. (torch still comes through models.catalogue -> models.fitting.)"""
    probe = "import sys, orchestration.cli; print(sorted({'dagster', 'mlflow', 'great_expectations'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300, check=True)  # fmt: skip
    assert proc.stdout.strip() == "[]"
