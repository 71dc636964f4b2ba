"""`avatarpipe` command line. Progress goes to stderr; `--json` prints one JSON object (one per line for `run` of several photos).

`avatarpipe --verbose COMMAND …` also shows what is hidden by default (`orchestration/console.py`).

The commands live in `orchestration/commands/` (one module each, built on click); what they
do is the application layer's (`orchestration/app.py`), which the Dagster definitions and the
HTTP service (`service/`) call too. This module only assembles the command group and maps click's
own errors and a bad configuration to exit status 2.
"""

from __future__ import annotations

import sys

import click

from orchestration.commands import (
    audit,
    config,
    erase,
    eval,
    export,
    fsck,
    ingest,
    keys,
    models,
    privacy_scan,
    purge_raw,
    quality_report,
    reprocess,
    resume,
    run,
    serve,
    verify_erasure,
    worker,
)
from orchestration.config import ConfigError
from orchestration.console import configure_output

COMMANDS: tuple[click.Command, ...] = (
    run.run, quality_report.quality_report_command, ingest.ingest, models.models, reprocess.reprocess_command,
    eval.evaluate, fsck.fsck_command, resume.resume, erase.erase_command, audit.audit,
    verify_erasure.verify_erasure_command, purge_raw.purge_raw, export.export, privacy_scan.privacy_scan,
    config.config, keys.keys, serve.serve, worker.worker,
)  # fmt: skip


@click.group("avatarpipe", help=__doc__.split("\n\n")[0])
@click.option(
    "--verbose", is_flag=True,
    help="also show Dagster's event lines, library logs, warnings and TFLite/absl chatter on stderr",
)  # fmt: skip
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """The `avatarpipe` command group; global flags come before the command."""
    configure_output(verbose, whole_process=bool(ctx.obj and ctx.obj.get("process_entry")))


for command in COMMANDS:
    cli.add_command(command)


def main(argv: list[str] | None = None) -> int:
    """Run one command and return its exit status (the console script's entry point: ``argv``
    None; a caller passing ``argv`` keeps its own process's warnings, logging and stderr)."""
    entry = {"process_entry": argv is None}
    try:
        return int(cli.main(args=argv, prog_name="avatarpipe", standalone_mode=False, obj=entry) or 0)
    except click.ClickException as exc:  # usage errors: exit status 2, as before
        exc.show()
        return exc.exit_code
    except click.Abort:
        print("Aborted!", file=sys.stderr)
        return 1
    except ConfigError as exc:  # validated at start: say which variable, never its secret
        print(f"avatarpipe: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
