"""The ``tlplug`` command: run, resume, search, lr-find, predict, eval, explain, export, shard,
plugins, list, groups, augment-preview, and the commands plugins add.

Every error a user can cause ends as one line on stderr and a non-zero exit status;
``TLPLUG_DEBUG=1`` shows the traceback of an unexpected one. Plugins are loaded the first
time a command is looked up, so ``tlplug --version`` loads none.
"""

from __future__ import annotations

import os
import sys

import click

from tlplug.cli import (  # noqa: F401  (they add the commands)
    data_commands,
    inspect_commands,
    lr_find_commands,
    run_commands,
    search_commands,
    ship_commands,
)
from tlplug.cli.group import cli
from tlplug.errors import COMMAND_LINE, TlplugError, one_line

__all__ = ["cli", "main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning every error into one line and an exit status."""
    token = COMMAND_LINE.set(True)  # messages name flags (--weights), not Python arguments
    try:
        _main(sys.argv[1:] if argv is None else list(argv))
    finally:
        COMMAND_LINE.reset(token)


#: The commands whose processes train together under torchrun; every other command runs
#: in rank 0 alone (the others have nothing to add and exit at once).
PARALLEL_COMMANDS = ("run", "resume")


def _main(args: list[str]) -> None:
    command = args[0] if args else ""
    if os.environ.get("RANK", "0") != "0" and command not in PARALLEL_COMMANDS:
        return
    try:
        cli.main(
            args=args, prog_name="tlplug", standalone_mode=False, obj={"command": ["tlplug", *args]}
        )
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "tlplug"
        _error(f"{exc.format_message()} (see '{command} --help')")
        sys.exit(2)
    except click.ClickException as exc:
        _error(exc.format_message())
        sys.exit(exc.exit_code)
    except TlplugError as exc:
        _error(one_line(exc))
        sys.exit(getattr(exc, "exit_code", 1))
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as exc:
        if isinstance(exc, ValueError) and "null byte" in str(exc):  # from click's path check
            _error("an argument contains a NUL byte; paths cannot hold one")
            sys.exit(2)
        if os.environ.get("TLPLUG_DEBUG"):
            raise
        _error(
            f"unexpected {type(exc).__name__}: {one_line(exc)} "
            "(set TLPLUG_DEBUG=1 to see the traceback, and please report it)"
        )
        sys.exit(1)


def _error(message: str) -> None:
    """Print ``message`` as the command's one error line; in one of several processes
    torchrun started, the line names the process (its rank)."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    where = f" (rank {os.environ.get('RANK', '?')} of {size})" if size > 1 else ""
    click.echo(f"Error{where}: {message}", err=True)
