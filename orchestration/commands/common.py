"""What every `avatarpipe` command shares: one way to start (the configuration, the environment
prepared once), one clean stdout (everything else to stderr), one `--json` option and one
emitter for the answer.

A command body is a plain function ``(settings, **options) -> Reply``; :func:`answers` turns it
into a click callback that loads the settings, runs the body with stdout redirected to stderr
(also for C libraries writing to fd 1), then prints the reply: with ``--json`` exactly one JSON
object on stdout (one per line for a command answering for several inputs), otherwise the body's text rendering. The callback returns the exit status.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import click

from orchestration.app import prepared_settings
from orchestration.settings import Settings


@dataclass(frozen=True)
class Reply:
    """What a command answers: its exit status, the ``--json`` object (None: nothing on stdout),
    its text rendering, and a message for stderr (printed in both modes)."""

    code: int
    answer: Any = None
    human: Callable[[Any], str] | None = None
    message: str | None = None
    human_on_stderr: bool = False  # a refused request: the text is the error message
    one_per_line: bool = False  # ``answer`` is a list: one JSON object per line (`run` of several photos)


def fail(code: int, message: str) -> Reply:
    """A refusal before any answer exists: the message on stderr, nothing on stdout."""
    return Reply(code, message=message)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Keep stdout clean for the JSON answer, also from C libraries writing to fd 1."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def emit(reply: Reply, as_json: bool) -> int:
    """Print ``reply`` (the one output path of every command) and return its exit status."""
    if reply.message:
        print(reply.message, file=sys.stderr)
    if as_json:
        for answer in reply.answer if reply.one_per_line else [reply.answer]:
            if answer is not None:
                print(json.dumps(answer, default=str))
    elif reply.human is not None:
        print(reply.human(reply.answer), file=sys.stderr if reply.human_on_stderr else sys.stdout)
    sys.stdout.flush()
    return reply.code


json_option = click.option("--json", "as_json", is_flag=True, help="print one JSON object on stdout")


def answers(*, prepare: bool = True) -> Callable[[Callable[..., Reply]], Callable[..., int]]:
    """Decorate a command body ``(settings, **options) -> Reply`` into a click callback with the
    `--json` option. ``prepare``: point Dagster and the model caches at the home first
    (`prepare_environment`); commands that only read the configuration or one store skip it."""

    def wrap(body: Callable[..., Reply]) -> Callable[..., int]:
        @functools.wraps(body)
        def callback(as_json: bool, **options: Any) -> int:
            settings = prepared_settings() if prepare else Settings.from_env()
            with stdout_to_stderr():
                reply = body(settings, **options)
            return emit(reply, as_json)

        return json_option(callback)

    return wrap


def parsed_by(parse: Callable[[str], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click option callback that converts each value with ``parse`` (a ValueError or
    TypeError is a usage error, exit status 2); multiple values stay a tuple, an absent one None."""

    def convert(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        try:
            if isinstance(value, tuple):
                return tuple(parse(v) for v in value)
            return None if value is None else parse(value)
        except (ValueError, TypeError) as exc:
            raise click.BadParameter(str(exc)) from None

    return convert


def hint_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The uploader's optional body hints (`models.hints.BodyHints`); a hint always wins."""
    command = click.option("--age-group", type=click.Choice(["child", "adult"]), help="age group hint")(command)
    command = click.option("--height-cm", type=float, help="standing height hint in cm (50-250)")(command)
    return click.option(
        "--build", type=click.Choice(["masculine", "feminine", "neutral"]), help="body build hint"
    )(command)


subject_option = click.option("--subject", help="subject id (letters, digits, _ and -); random if omitted")
