"""What every command shares: the Typer app, the console, the tables, and how a user's error is shown."""

from __future__ import annotations

import functools
from typing import Callable

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from zoomorph.errors import DiskFull, ZoomorphError

app = typer.Typer(help="Galaxy morphology from images, trained on Galaxy Zoo votes.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)
console = Console()

PresetOpt = typer.Option("hubble", "--preset", "-p",
                         help="hubble | hubble+edge-on | seed | smooth-featured | a rules .toml file")
ConflictsOpt = typer.Option("exclude", help="galaxies meeting two rules: exclude (counted) or first (rule order wins)")


def _table(title: str, rows: dict, key: str = "what", value: str = "count") -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(key)
    table.add_column(value, justify="right")
    for k, v in rows.items():
        table.add_row(str(k), f"{v:,}" if isinstance(v, int) else str(v))
    return table


def _fail(err: Exception) -> None:
    # soft_wrap: one line however long its paths, for the terminal to fold (and grep to find)
    console.print(f"[red]error:[/red] {escape(str(err))}", soft_wrap=True)  # escaped: "zoomorph[serve]" is no markup
    raise typer.Exit(2)


def user_errors(command: Callable) -> Callable:
    """A command's errors that the user caused (ZoomorphError, a file that is not there, a full disk)
    as one clear line and exit 2; any other exception is a bug and keeps its traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (ZoomorphError, FileNotFoundError, DiskFull) as err:
            _fail(err)

    return run
