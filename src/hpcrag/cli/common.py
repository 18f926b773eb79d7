"""Helpers shared by the command groups: the loaded config and output for people or scripts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from hpcrag.config import Config

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def load(ctx: click.Context) -> Config:
    from hpcrag.config import load_config

    options = ctx.find_root().obj or {}
    return load_config(options.get("config_dir"), options.get("profile"))


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Table(title=title, title_justify="left")
    for column in columns:
        out.add_column(column)
    for row in rows:
        out.add_row(*(str(v) for v in row))
    Console().print(out)
