"""How a command ends: the error policy of the command line.

Exit codes: 0 all good; 1 some videos failed (each named on its own line) or a bug; 2 a usage or
input error, as one `Error:` line. Input errors are the project's own types
(:class:`cslr_pipe.features.errors.InputError` and its subclasses, YAML a user wrote): anything
else is a defect, shown with its traceback and a request to report it. ``--verbose`` adds the
traceback to input errors too.
"""

from __future__ import annotations

import functools
import sys
import traceback
from typing import TYPE_CHECKING

import click

from cslr_pipe.features.errors import InputError
from cslr_pipe.features.quiet import is_verbose

if TYPE_CHECKING:
    from cslr_pipe.pipeline.runner import ShardResult

BUG_REPORT = ("this is a bug in cslr-pipe or a library it uses, not in your input: please report it with the "
              "traceback above and the command you ran")


class Failed(click.ClickException):
    """Some items failed; each was already named on its own line."""

    exit_code = 1


class CommandInputError(click.ClickException):
    """A file the user gave cannot be used: one line `Error: <path>: <reason>`, exit code 2."""

    exit_code = 2


def fail_usage(message: str) -> None:
    raise click.UsageError(message)


def fail_input(message: str) -> None:
    raise CommandInputError(message)


def input_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean an input cannot be used: the project's own, and YAML a user wrote
    (looked up only when yaml was imported, since otherwise nothing can have raised it)."""
    yaml = sys.modules.get("yaml")
    return (InputError, yaml.YAMLError) if yaml else (InputError,)


def handle_errors(function):
    """Input errors become one line with exit code 2; any other exception keeps its traceback and
    says it is a bug to report."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except click.ClickException:
            raise
        except input_errors() as error:
            if is_verbose():
                traceback.print_exc()
            fail_input(" ".join(str(error).split()))
        except Exception:
            traceback.print_exc()
            click.echo(f"Error: {BUG_REPORT}", err=True)
            sys.exit(1)
    return wrapper


def report(results: list[ShardResult], per_stage: bool = True) -> None:
    """One line per failed video on stderr, a summary per stage on stdout; exit 1 on failures."""
    for result in results:
        for video_id, reason in result.failed.items():
            click.echo(f"failed: {result.stage} {video_id}: {reason}", err=True)
    for stage in dict.fromkeys(r.stage for r in results) if per_stage else ():
        mine = [r for r in results if r.stage == stage]
        click.echo(f"{stage}: {sum(r.computed for r in mine)} computed, "
                   f"{sum(r.reused for r in mine)} reused, "
                   f"{sum(r.skipped for r in mine)} of {len(mine)} shards already complete, "
                   f"{sum(len(r.failed) for r in mine)} failed")
    failed = sum(len(r.failed) for r in results)
    if failed:
        raise Failed(f"{failed} video(s) failed (listed above); fix them and re-run to retry only those")
