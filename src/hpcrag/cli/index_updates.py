"""`hpcrag index add|upsert|delete|compact`: change an index in place.

add, upsert and delete run as one process or as every rank of `mpirun`/`srun` like `search`: each
opens the index (replaying the update log), applies its change through the log (durable before it
prints), and ends. A running `hpcrag index serve` of the same index picks the change up by itself.
compact is one process and offline: it refuses while a service or job has the index open.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from hpcrag.cli.common import echo_json
from hpcrag.cli.index import _collective, comm_option, verify_option

if TYPE_CHECKING:
    from hpcrag.search.comm import Communicator
    from hpcrag.search.index import UpdateResult

vectors_option = click.option(
    "--vectors",
    "vectors_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Vectors to write (.npy float32/float16 or .fvecs), one row per id.",
)
ids_option = click.option(
    "--ids", "ids_path", type=click.Path(path_type=Path), help=".npy of int64 ids, one per vector."
)
attributes_option = click.option(
    "--attributes",
    "attributes_path",
    type=click.Path(path_type=Path),
    help='JSON Lines, one object of attributes per vector (e.g. {"source": "faq", "year": 2024}).',
)
declare_option = click.option(
    "--attribute",
    "declared",
    multiple=True,
    metavar="NAME:TYPE",
    help="Declare an attribute's type (int, str, time); undeclared ones are inferred from the data.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def _write_command(kind: str) -> click.Command:
    summary = (
        "Add new vectors to an index (an id already there is an error: use upsert)."
        if kind == "add"
        else "Add or replace vectors by id, atomically per call (of repeated ids the last row counts)."
    )

    @click.command(name=kind, help=summary)
    @click.argument("index_dir", type=click.Path(path_type=Path))
    @vectors_option
    @ids_option
    @attributes_option
    @declare_option
    @json_option
    @verify_option
    @comm_option
    def command(
        index_dir: Path,
        vectors_path: Path,
        ids_path: Path | None,
        attributes_path: Path | None,
        declared: tuple[str, ...],
        as_json: bool,
        verify: bool,
        comm_kind: str,
    ) -> None:
        def body(comm: Communicator) -> None:
            from hpcrag.errors import HpcragError
            from hpcrag.search.attributes import AttributeSchema, read_attributes_file
            from hpcrag.search.comm import agree
            from hpcrag.search.index import DistributedIndex
            from hpcrag.search.inputs import load_ids, open_vectors

            def inputs() -> tuple:
                if ids_path is None:
                    raise HpcragError(f"--ids is required: give the ids of the vectors to {kind}")
                vectors = open_vectors(vectors_path)
                ids = load_ids(ids_path, vectors.shape[0], unique=False)
                rows = None if attributes_path is None else read_attributes_file(attributes_path, len(ids))
                declare = AttributeSchema.parse(declared).to_json() if declared else None
                return vectors, ids, rows, declare

            vectors, ids, rows, declare = agree(comm, lambda: inputs() if comm.rank == 0 else (None,) * 4)
            opened = DistributedIndex.open(index_dir, comm, verify=verify)
            try:
                write = opened.add if kind == "add" else opened.upsert
                result = write(vectors, ids, attributes=rows, declare=declare)
            finally:
                opened.close()
            if result is not None:
                _report(kind, index_dir, result, as_json)

        _collective(comm_kind, "cpu", body)

    return command


add = _write_command("add")
upsert = _write_command("upsert")


@click.command()
@click.argument("index_dir", type=click.Path(path_type=Path))
@ids_option
@click.option("--id", "inline_ids", type=int, multiple=True, help="An id to delete (repeatable).")
@click.option("--strict", is_flag=True, help="Refuse (and delete nothing) if any id is not in the index.")
@json_option
@verify_option
@comm_option
def delete(
    index_dir: Path,
    ids_path: Path | None,
    inline_ids: tuple[int, ...],
    strict: bool,
    as_json: bool,
    verify: bool,
    comm_kind: str,
) -> None:
    """Delete vectors by id (--ids FILE.npy or --id N ...); unknown ids are reported, not an error."""

    def body(comm: Communicator) -> None:
        import numpy as np

        from hpcrag.errors import HpcragError
        from hpcrag.search.comm import agree
        from hpcrag.search.index import DistributedIndex
        from hpcrag.search.inputs import load_ids

        def ids() -> np.ndarray:
            if ids_path is None and not inline_ids:
                raise HpcragError("no ids given: pass --ids FILE.npy or --id N (repeatable)")
            given = [] if ids_path is None else load_ids(ids_path, None, unique=False).tolist()
            return np.asarray(given + list(inline_ids), dtype=np.int64)

        chosen = agree(comm, lambda: ids() if comm.rank == 0 else None)
        opened = DistributedIndex.open(index_dir, comm, verify=verify)
        try:
            result = opened.delete(chosen, strict=strict)
        finally:
            opened.close()
        if result is not None:
            _report("delete", index_dir, result, as_json)

    _collective(comm_kind, "cpu", body)


@click.command()
@click.argument("index_dir", type=click.Path(path_type=Path))
@json_option
def compact(index_dir: Path, as_json: bool) -> None:
    """Fold the update log into new shards (offline: stop services of the index first)."""
    from dataclasses import asdict

    from hpcrag.errors import HpcragError
    from hpcrag.search.compact import compact_index

    try:
        report = compact_index(
            index_dir, progress=lambda m: click.echo(f"[hpcrag index compact] {m}", err=True)
        )
    except HpcragError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        echo_json(asdict(report))
        return
    click.echo(
        f"compacted {index_dir} up to update #{report.seq}: {report.vectors} vectors; folded "
        f"{report.rows_folded} added rows, dropped {report.rows_dropped} deleted or replaced ones "
        f"in {report.seconds:.1f} s"
    )
    click.echo(f"centroids: {report.drift.reason}")


def _report(kind: str, index_dir: Path, result: UpdateResult, as_json: bool) -> None:
    if as_json:
        from dataclasses import asdict

        echo_json({**asdict(result), "unknown_ids": list(result.unknown_ids)})
        return
    if kind == "delete":
        text = f"deleted {result.deleted} vectors from {index_dir}"
        if result.unknown_ids:
            shown = ", ".join(map(str, result.unknown_ids[:10]))
            more = " ..." if len(result.unknown_ids) > 10 else ""
            text += f"; {len(result.unknown_ids)} ids were not in the index ({shown}{more})"
    else:
        text = f"{kind}: {result.added} new and {result.replaced} replaced vectors in {index_dir}"
        if result.declared:
            text += "; declared " + ", ".join(f"{n}:{t}" for n, t in result.declared.items())
    click.echo(f"{text} (update #{result.seq}, durable)")


COMMANDS = (add, upsert, delete, compact)
