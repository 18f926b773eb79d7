"""`hpcrag rag`: ingest documents into a collection, ask it questions, evaluate its retrieval."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hpcrag.cli.common import echo_json, json_option, load, shown, table

if TYPE_CHECKING:
    from hpcrag.config import Config
    from hpcrag.config.rag_schema import CollectionSettings
    from hpcrag.rag.collection import Collection

TIERS = click.Choice(["s", "m", "l", "xl"], case_sensitive=False)
FUSIONS = click.Choice(["convex", "rrf", "dense", "bm25"])


@click.group()
def rag() -> None:
    """Retrieval-augmented generation: documents in, cited answers out."""


def _collection(config: Config, name: str, tier: str | None = None) -> tuple[Collection, CollectionSettings]:
    from hpcrag.rag.collection import Collection, check_name, collections_root

    settings = config.rag.for_collection(check_name(name), tier)
    return Collection(collections_root(config.rag.collections_dir), name), settings


def _pairs(items: tuple[str, ...], what: str) -> dict[str, str]:
    from hpcrag.errors import HpcragError

    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise HpcragError(f"bad {what} {item!r}: write key=value")
        pairs[key.strip()] = value.strip()
    return pairs


@rag.command()
@click.argument("collection")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--tier", type=TIERS, help="Chunk size of this tier (rag.yaml tiers; default: the collection's)."
)
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Metadata on every document (repeatable).")
@click.option(
    "--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal)."
)
@json_option
@click.pass_context
def ingest(
    ctx: click.Context,
    collection: str,
    paths: tuple[Path, ...],
    tier: str | None,
    meta: tuple[str, ...],
    progress: bool | None,
    as_json: bool,
) -> None:
    """Add, replace and remove the documents under PATHS (HTML, Markdown, text, man pages, PDF).

    Under `srun --mpi=pmix` (slurm/rag-ingest.sbatch) the ranks split the documents between them and
    build the dense index together."""
    from dataclasses import asdict

    from hpcrag.rag.factory import make_embedder
    from hpcrag.rag.ingest import ingest as run_ingest
    from hpcrag.search import make_comm

    comm = make_comm()  # MPI under srun/mpirun: the ranks share the files, then build the index together
    config = load(ctx)
    target, settings = _collection(config, collection, tier)
    metadata = _pairs(meta, "--meta")
    say = (lambda m: click.echo(m, err=True)) if as_json else click.echo
    embedder = make_embedder(settings.embedder)
    show_progress = sys.stderr.isatty() if progress is None else progress
    report = run_ingest(target, list(paths), settings, embedder, metadata, show_progress, say, comm)
    if comm.rank != 0:
        return
    if as_json:
        echo_json(
            {**asdict(report), "chunks_per_s": dict(zip(("whole", "embedder"), report.rates(), strict=True))}
        )
        return
    _print_ingest(report)


def _print_ingest(report: Any) -> None:
    click.echo(
        f"collection {report.collection}: generation {report.generation}, {report.documents:,} documents, "
        f"{report.chunks:,} chunks"
    )
    click.echo(
        f"  added {len(report.added)}, replaced {len(report.replaced)}, removed {len(report.removed)}, "
        f"unchanged {report.unchanged}"
    )
    if report.chunks_new:
        whole, alone = report.rates()
        click.echo(
            f"  chunks: {report.chunks_new:,} new, {report.chunks_embedded:,} embedded, "
            f"{report.chunks_cached:,} from the cache"
        )
        if report.chunks_embedded:
            click.echo(f"  chunks/s: whole ingest {whole:.1f}, embedding stage {alone:.1f}")
    if report.pii_masked or report.injection_flagged:
        click.echo(
            f"  PII: {report.pii_masked} sections masked; injection: {report.injection_flagged} chunks "
            f"flagged, {report.injection_dropped} dropped"
        )
    for source, reason in report.skipped:
        click.echo(f"  skipped {shown(source)}: {shown(reason)}")
    for source, reason in report.refused:
        click.echo(f"  refused {shown(source)}: {shown(reason)}")
    seconds = ", ".join(f"{k} {v:.2f}s" for k, v in report.seconds.items())
    click.echo(f"  time: {seconds}")
    for note in report.notes:
        click.echo(f"  {note}")


@rag.command()
@click.argument("collection")
@click.argument("question")
@click.option(
    "--tier", type=TIERS, help="Top-k, context budget and generation tier (default: the collection's)."
)
@click.option(
    "--filter", "filters", multiple=True, metavar="KEY=VALUE", help="Only matching chunks (repeatable)."
)
@click.option("--retrieve-only", is_flag=True, help="Print the ranked sources without generating an answer.")
@click.option(
    "-k", "top_k", type=click.IntRange(min=1, max=1000), help="Sources to retrieve (default: tier's top_k)."
)
@click.option("--fusion", type=FUSIONS, help="Override rag.yaml retrieval.fusion.")
@click.option(
    "--model", help="Model to ask (default: tier-<tier> through the gateway; 'auto' lets it route)."
)
@click.option("--gateway", "gateway_url", envvar="HPCRAG_GATEWAY_URL", help="Gateway base URL.")
@click.option(
    "--api-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File with the gateway API key (else $HPCRAG_API_KEY).",
)
@click.option("--ca", type=click.Path(dir_okay=False, path_type=Path), help="CA bundle of an HTTPS gateway.")
@click.option("--stream/--no-stream", default=True, show_default=True)
@click.option(
    "--search-endpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Endpoint file of a running `hpcrag index serve` holding this collection's dense index.",
)
@click.option(
    "--search-replicas",
    metavar="GROUP",
    help="Search the dense side through this replica group (default: rag.yaml's search_replicas).",
)
@json_option
@click.pass_context
def query(
    ctx: click.Context,
    collection: str,
    question: str,
    tier: str | None,
    filters: tuple[str, ...],
    retrieve_only: bool,
    top_k: int | None,
    fusion: str | None,
    model: str | None,
    gateway_url: str | None,
    api_key_file: Path | None,
    ca: Path | None,
    stream: bool,
    search_endpoint: Path | None,
    search_replicas: str | None,
    as_json: bool,
) -> None:
    """Answer QUESTION from COLLECTION with numbered, checked citations."""
    from hpcrag.rag.factory import open_pipeline
    from hpcrag.rag.retrieve import parse_filters

    config = load(ctx)
    target, settings = _collection(config, collection, tier)
    where = parse_filters(list(filters))
    if search_replicas:
        settings = settings.model_copy(update={"search_replicas": search_replicas})
    registry = config.resolve_path(config.serving.registry)
    pipeline = open_pipeline(target, settings, search_endpoint, registry=registry)
    try:
        if retrieve_only:
            _print_retrieval(pipeline, question, where, fusion, top_k or settings.row.top_k, as_json)
            return
        generator = _generator(config, gateway_url, api_key_file, ca)
        pipeline.helper = generator  # for query expansion and HyDE, when rag.yaml turns them on
        on_delta = None if (as_json or not stream) else (lambda d: click.echo(_printable(d), nl=False))
        try:
            answer = pipeline.answer(question, generator, tier, where, model, on_delta, top_k, fusion)
        finally:
            generator.close()
    finally:
        pipeline.loaded.close()
    if as_json:
        echo_json(answer.to_json())
        return
    if on_delta is None:
        click.echo(_printable(answer.answer))
    else:
        click.echo()
    _print_answer_footer(answer)


def _printable(text: str) -> str:
    """Model text as a terminal may show it: control characters other than newline and tab escaped
    (an answer or a planted source could carry escape sequences)."""
    return "".join(c if c in "\n\t" or c.isprintable() else shown(c) for c in text)


def _generator(config: Config, url: str | None, key_file: Path | None, ca: Path | None) -> Any:
    from hpcrag.errors import HpcragError
    from hpcrag.rag.generate import HttpGenerator

    if url is None:
        host = config.gateway.host if config.gateway.host not in ("0.0.0.0", "::") else "127.0.0.1"
        scheme = "https" if config.gateway.tls else "http"
        url = f"{scheme}://{host}:{config.gateway.port}"
    if key_file is not None:
        try:
            key = key_file.read_text().strip()
        except OSError as exc:
            raise HpcragError(f"cannot read --api-key-file {key_file}: {exc.strerror or exc}") from None
    else:
        key = os.environ.get("HPCRAG_API_KEY", "")
    if not key:
        raise HpcragError(
            "generation goes through the gateway and needs an API key: --api-key-file or $HPCRAG_API_KEY "
            "(`hpcrag gateway keys add NAME`), or use --retrieve-only"
        )
    return HttpGenerator(url, key, verify=str(ca) if ca else True)


def _print_retrieval(
    pipeline: Any, question: str, filters: dict[str, list[str]], fusion: str | None, k: int, as_json: bool
) -> None:
    candidates, seconds = pipeline.retrieve(question, filters, fusion, k)
    chunks = pipeline.loaded.store.chunks([c.row for c in candidates])
    documents = pipeline.loaded.store.documents_by_id(c.doc_id for c in chunks) if chunks else {}
    rows = []
    for rank, (candidate, chunk) in enumerate(zip(candidates, chunks, strict=True), start=1):
        document = documents[chunk.doc_id]
        rows.append(
            {
                "rank": rank,
                "chunk_id": chunk.chunk_id,
                "document": document.source,
                "title": document.title,
                "section": list(chunk.heading_path),
                "anchor": chunk.anchor,
                "scores": {k: round(float(v), 4) for k, v in candidate.scores.items()},
                "text": chunk.text,
            }
        )
    if as_json:
        echo_json({"sources": rows, "seconds": seconds})
        return
    if not rows:
        click.echo("no chunk matches the question and filters")
        return
    table(
        f"sources for: {question}",
        ["#", "document", "section", "fused", "dense", "bm25"],
        [
            [
                str(r["rank"]),
                Path(r["document"]).name + (f"#{r['anchor']}" if r["anchor"] else ""),
                " > ".join(r["section"]),
                f"{r['scores'].get('fused', 0):.3f}",
                f"{r['scores'].get('dense', 0):.3f}",
                f"{r['scores'].get('bm25', 0):.2f}",
            ]
            for r in rows
        ],
    )
    click.echo(f"retrieval: {sum(seconds.values()) * 1000:.1f} ms")


def _print_answer_footer(answer: Any) -> None:
    click.echo()
    click.echo("Sources:")
    for source in answer.sources:
        marker = "*" if source.number in answer.cited else " "
        where = Path(source.document).name + (f"#{source.anchor}" if source.anchor else "")
        section = " > ".join(source.section)
        click.echo(f" {marker}[{source.number}] {shown(source.title)}: {shown(section)} ({shown(where)})")
    if answer.removed_citations:
        click.echo(f"removed citations to sources that were not given: {', '.join(answer.removed_citations)}")
    if answer.unsupported:
        click.echo(f"{len(answer.unsupported)} sentence(s) not supported by the sources they cite")
    click.echo(
        f"tier {answer.tier.upper()}, model {answer.model or '?'}; "
        + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in answer.seconds.items())
    )


@rag.command(name="list")
@json_option
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """The collections and their sizes."""
    from dataclasses import asdict

    from hpcrag.rag.collection import collections_root, list_collections

    config = load(ctx)
    found = list_collections(collections_root(config.rag.collections_dir))
    if as_json:
        echo_json([asdict(m) for m in found])
        return
    table(
        "collections",
        ["collection", "generation", "documents", "chunks", "tier", "embedder"],
        [[m.name, str(m.generation), f"{m.documents:,}", f"{m.chunks:,}", m.tier, m.embedder] for m in found],
    )


@rag.command(name="eval")
@click.argument("collection")
@click.argument("qa_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N questions.")
@click.option("--repeats", default=1, show_default=True, type=click.IntRange(min=1))
@json_option
@click.pass_context
def eval_(
    ctx: click.Context, collection: str, qa_file: Path, limit: int | None, repeats: int, as_json: bool
) -> None:
    """Retrieval quality and latency: BM25, dense and the configured hybrid (and reranker), one run."""
    from hpcrag.rag.evaluate_collection import evaluate

    config = load(ctx)
    target, settings = _collection(config, collection)
    report = evaluate(target, settings, qa_file, limit=limit, repeats=repeats)
    if as_json:
        echo_json(report.to_json())
        return
    from hpcrag.rag.evaluation import format_report

    click.echo(format_report(report))


@rag.command(name="eval-set")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--html-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/usr/share/doc/slurm-wlm/html"),
    show_default=True,
    help="Slurm's HTML documentation (Debian package slurm-wlm-doc).",
)
def eval_set(out_dir: Path, html_dir: Path) -> None:
    """Write OUT_DIR/corpus (the Slurm docs, FAQ questions removed) and OUT_DIR/qa.jsonl."""
    from hpcrag.rag.evalset import build_slurm_faq_set

    summary = build_slurm_faq_set(html_dir, out_dir / "corpus", out_dir / "qa.jsonl")
    skipped = len(summary.skipped_short) + len(summary.skipped_indistinct)
    click.echo(
        f"wrote {summary.corpus_dir} ({summary.pages_copied} pages, the FAQ's question text removed) and "
        f"{summary.qa_path} ({summary.items_written} of {summary.questions_found} FAQ questions; "
        f"{skipped} skipped: answers too short or not distinct)"
    )
    click.echo(f"next: hpcrag rag ingest NAME {summary.corpus_dir} && hpcrag rag eval NAME {summary.qa_path}")
