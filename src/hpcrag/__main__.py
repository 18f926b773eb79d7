"""`python -m hpcrag` is the `hpcrag` command."""

from hpcrag.cli.main import cli

cli()
