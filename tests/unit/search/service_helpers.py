"""Run a SearchService in a thread of the test process, over real HTTP, and stop it afterwards."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import httpx

from hpcrag.search import DistributedIndex
from hpcrag.search.service import SearchService, ServiceOptions

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextmanager
def running_service(
    index_dir: Path, options: ServiceOptions
) -> Iterator[tuple[SearchService, threading.Thread]]:
    """A started service (port 0 on 127.0.0.1 unless `options` say otherwise) and its batch thread."""
    options = replace(options, token=options.token or TOKEN)
    service = SearchService(DistributedIndex.open(index_dir), options)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not service._ready.is_set() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert service._ready.is_set(), "the service did not start"
    try:
        yield service, thread
    finally:
        service.stop()
        thread.join(timeout=10)


def client(service: SearchService, **kwargs) -> httpx.Client:
    return httpx.Client(base_url=service.url, headers=AUTH, timeout=30, **kwargs)
