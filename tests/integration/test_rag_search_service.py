"""A collection's dense side through a running `hpcrag index serve` (`--search-endpoint`): the same ranking
as in process, and a clear refusal once the service no longer holds the collection's current generation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcrag.config import load_config
from hpcrag.errors import HpcragError
from hpcrag.rag import factory
from hpcrag.rag.collection import Collection
from hpcrag.rag.ingest import ingest
from tests.integration.helpers import eventually

PAGES = {
    "arrays.md": "# Job arrays\n\nSubmit many similar jobs with sbatch --array=1-100; each task reads "
    "SLURM_ARRAY_TASK_ID.\n",
    "gpus.md": "# GPUs\n\nRequest two GPUs with --gres=gpu:2 on the gpu partition.\n",
    "cancel.md": "# Cancelling\n\nscancel 1234_7 cancels task 7 of array job 1234.\n",
}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Collection, Path, Path, object]]:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in PAGES.items():
        (folder / name).write_text(text)
    settings = load_config().rag.for_collection("docs")
    collection = Collection(tmp_path / "rag", "docs")
    ingest(collection, [folder], settings, factory.make_embedder(settings.embedder))
    endpoint = tmp_path / "endpoint.json"
    command = [
        sys.executable, "-m", "hpcrag", "index", "serve", str(collection.current_path() / "dense"),
        "--port", "0", "--endpoint-file", str(endpoint),
    ]  # fmt: skip
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        eventually(lambda: endpoint.exists() or process.poll() is not None, timeout=120, what="endpoint file")
        assert process.poll() is None, log.read_text()
        yield collection, folder, endpoint, settings
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_service_ranks_as_the_index_in_process_and_refuses_a_stale_generation(served) -> None:
    collection, folder, endpoint, settings = served
    question = "How do I cancel one task of a job array?"
    local = factory.open_pipeline(collection, settings)
    remote = factory.open_pipeline(collection, settings, search_endpoint=endpoint)
    try:
        here, _ = local.retrieve(question, fusion="dense", k=3)
        there, _ = remote.retrieve(question, fusion="dense", k=3)
    finally:
        local.loaded.close()
        remote.loaded.close()
    assert [c.chunk_id for c in there] == [c.chunk_id for c in here]
    assert json.loads(endpoint.read_text())["url"].startswith("http://127.0.0.1:")

    (folder / "gpus.md").write_text("# GPUs\n\nAsk for four GPUs with --gpus=4.\n")
    ingest(collection, [folder], settings, factory.make_embedder(settings.embedder))
    with pytest.raises(HpcragError, match=r"does not hold generation 2 of collection 'docs'; serve it with"):
        factory.open_pipeline(collection, settings, search_endpoint=endpoint)


def test_a_collection_served_by_a_replica_group_ranks_as_in_process(served, tmp_path: Path) -> None:
    from hpcrag.search.replicas import ReplicaRegistration
    from hpcrag.serve.registry import Registry

    collection, _, endpoint, settings = served
    registry_path = tmp_path / "registry.sqlite"
    service = json.loads(endpoint.read_text())
    registration = ReplicaRegistration(
        Registry(registry_path), "docs-dense", "nyc", collection.current_path() / "dense", service["url"],
        service["token"], ranks=1,
    )  # fmt: skip
    question = "How do I cancel one task of a job array?"
    grouped = settings.model_copy(update={"search_replicas": "docs-dense"})
    local = factory.open_pipeline(collection, settings)
    remote = factory.open_pipeline(collection, grouped, registry=registry_path)
    try:
        here, _ = local.retrieve(question, fusion="dense", k=3)
        there, _ = remote.retrieve(question, fusion="dense", k=3)
        assert remote.loaded.dense.group == "docs-dense"
    finally:
        local.loaded.close()
        remote.loaded.close()
    assert [c.chunk_id for c in there] == [c.chunk_id for c in here]
    registration.close()
    with pytest.raises(HpcragError, match=r"no replica of index group 'docs-dense'.*none registered"):
        factory.open_pipeline(collection, grouped, registry=registry_path)
    with pytest.raises(HpcragError, match=r"no endpoint registry was given"):
        factory.open_pipeline(collection, grouped)
