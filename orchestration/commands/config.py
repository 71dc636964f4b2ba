"""`avatarpipe config show [--json]`: the effective configuration, every secret redacted, with
where each value came from (an environment variable, the default, or derived from others).

Exit status: 0, or 2 when the environment does not validate (the message names the variables).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict


def cmd_config_show(args: argparse.Namespace) -> int:
    from orchestration.config import ConfigError, describe, load_config

    try:
        entries = describe(load_config())
    except ConfigError as exc:
        print(f"avatarpipe: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"settings": [asdict(e) for e in entries]}, default=str))
        return 0
    width = max(len(e.variable) for e in entries)
    for entry in entries:
        value = "(unset)" if entry.value in (None, "") else entry.value
        print(f"{entry.variable:<{width}}  {value}  [{entry.source}]")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("config", help="show the effective configuration (redacted)")
    actions = parser.add_subparsers(dest="config_command", required=True)
    show = actions.add_parser("show", help="every setting, redacted, with its source")
    show.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    show.set_defaults(func=cmd_config_show)
