"""Helpers shared by the command groups: the loaded config, option types, and output for people or scripts.

What is printed for people is safe for a terminal (control and format characters are shown escaped,
never sent raw), never cut so that two rows look alike, and shows small dollar amounts with their
significant digits.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from hpcrag.errors import HpcragError

if TYPE_CHECKING:
    from hpcrag.config import Config

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


F = TypeVar("F", bound=Callable[..., Any])


def replicate_option(help: str) -> Callable[[F], F]:
    """`--replicate SHARE`: boundary vectors also stored in a second shard (index build, plan search)."""
    return click.option("--replicate", type=float, default=0.0, show_default=True, metavar="SHARE", help=help)


_PEM = click.Path(dir_okay=False, path_type=Path)


def tls_options(command: F) -> F:
    """--tls-cert, --tls-key and --tls-client-ca, for every command that serves HTTPS."""
    command = click.option("--tls-client-ca", type=_PEM, help="Require client certificates of this CA.")(
        command
    )
    command = click.option("--tls-key", type=_PEM, help="The unencrypted PEM key of --tls-cert.")(command)
    return click.option("--tls-cert", type=_PEM, help="Serve HTTPS with this PEM certificate chain.")(command)


def tls_files(
    cert: Path | None, key: Path | None, client_ca: Path | None
) -> tuple[Path, Path, Path | None] | None:
    """The HTTPS files given on the command line (None: plain HTTP); half a pair is an error."""
    if (cert is None) != (key is None):
        raise HpcragError("--tls-cert and --tls-key go together: give both, or neither for plain HTTP")
    if client_ca is not None and cert is None:
        raise HpcragError("--tls-client-ca needs --tls-cert and --tls-key (client certificates need TLS)")
    return None if cert is None or key is None else (cert, key, client_ca)


class Port(click.ParamType):
    """A TCP port to listen on: 1-65535, or 0 for a free port the system picks (the server prints it)."""

    name = "port"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            port = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a port number: give 1-65535, or 0 for a free port", param, ctx)
        if not 0 <= port <= 65535:
            self.fail(f"{port} is out of range: ports are 1-65535, or 0 for a free port", param, ctx)
        return port


PORT = Port()


def load(ctx: click.Context) -> Config:
    from hpcrag.config import load_config

    options = ctx.find_root().obj or {}
    return load_config(options.get("config_dir"), options.get("profile"))


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def shown(text: str) -> str:
    """`text` as a terminal can show it: control, format and separator characters and lone surrogates
    (from a name that was not UTF-8) escaped as `\\x1b`, `\\u202e`, `\\udcff`."""
    return "".join(
        char.encode("unicode_escape").decode("ascii") if unicodedata.category(char) in _UNSAFE else char
        for char in text
    )


# Cc control (ESC, newline), Cf format (bidi overrides), Cs surrogates, Co private use, Cn unassigned,
# Zl/Zp line and paragraph separators.
_UNSAFE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], whole: str | None = None
) -> None:
    """Print a table; column `whole` (default: the first, a row's name) gets the width it needs, up to
    half the terminal.

    Every column folds a value too long for it onto more lines rather than ending it in an ellipsis,
    so that each value is shown in full at any terminal width and two rows never look alike.
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    whole = columns[0] if whole is None else whole
    cells = [[shown(str(v)) for v in row] for row in rows]
    out = Table(title=Text(shown(title)), title_justify="left")
    for i, column in enumerate(columns):
        width = None
        if column == whole:
            # A fixed width: rich's own sizing squeezes a long unbroken name to a few characters.
            longest = max([len(column), *(len(row[i]) for row in cells)])
            width = min(longest, max(len(column), console.width // 2))
        out.add_column(column, overflow="fold", width=width)
    for row in cells:
        # Text, not str: a value is never read as rich markup ("[red]" stays as it is).
        out.add_row(*(Text(v) for v in row))
    console.print(out)
