"""`avatarpipe config show [--json]`: the effective configuration, every secret redacted, with
where each value came from (an environment variable, the default, or derived from others).

Exit status: 0, or 2 when the environment does not validate (the message names the variables).
"""

from __future__ import annotations

from dataclasses import asdict

import click

from orchestration.commands.common import Reply, answers
from orchestration.config import Entry, describe
from orchestration.settings import Settings


def _human(entries: list[Entry]) -> str:
    width = max(len(e.variable) for e in entries)
    return "\n".join(
        f"{e.variable:<{width}}  {'(unset)' if e.value in (None, '') else e.value}  [{e.source}]" for e in entries
    )


@click.group("config", help="show the effective configuration (redacted)")
def config() -> None:
    """`avatarpipe config show`."""


@config.command("show", help="every setting, redacted, with its source")
@answers(prepare=False)
def show(settings: Settings) -> Reply:
    entries = describe(settings.app)
    return Reply(0, {"settings": [asdict(e) for e in entries]}, lambda _answer: _human(entries))
