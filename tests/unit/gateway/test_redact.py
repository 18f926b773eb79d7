"""No credential reaches a log line: the filter over generated text, and the real gateway app fed
oversized headers and request lines that carry a real key (aiohttp's parser quotes the raw bytes)."""

from __future__ import annotations

import asyncio
import logging
import string
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hpcrag.util import redact
from tests.conftest import CONFIG_DIR


@pytest.fixture
def installed() -> Iterator[None]:
    """redact.install() for one test; the process's logging is put back as it was afterwards."""
    factory = logging.getLogRecordFactory()
    handlers = list(logging.getLogger().handlers)
    redact.install()
    try:
        yield
    finally:
        logging.setLogRecordFactory(factory)
        for handler in handlers:
            handler.removeFilter(redact._FILTER)


TOKEN68 = string.ascii_letters + string.digits + "-._~+/"
URLSAFE = string.ascii_letters + string.digits + "-_"
FORMS = [
    "Authorization: Bearer {}",
    "authorization:{}",
    "Proxy-Authorization: Basic {}",
    "bearer {}",
    "BEARER\t{}",
    "api_key={}",
    "api-key: {}",
    "X-Api-Key: {}",
    "token={}",
    "access_token={}",
    "password={}",
    "{{'api_key': '{}'}}",
    '{{"Authorization": "Bearer {}"}}',
    "--api-key {}",
    "--token={}",
    "b'Authorization: Bearer {}\\r\\n'",
    "GET /v1/models?x=1&api_key={}&y=2 HTTP/1.1",
]


@settings(max_examples=300, deadline=1000)
@given(
    before=st.text(max_size=60),
    after=st.text(max_size=60),
    form=st.sampled_from(FORMS),
    token=st.text(alphabet=TOKEN68, min_size=12, max_size=64),
)
def test_a_labelled_credential_is_redacted_in_any_text(
    before: str, after: str, form: str, token: str
) -> None:
    text = before + form.format(token) + after
    assume(text.count(token) == 1)  # the token is the credential, not also a piece of the other text
    assert token not in redact.redact(text)


@settings(max_examples=200, deadline=1000)
@given(
    before=st.text(max_size=60),
    after=st.text(max_size=60),
    secret=st.text(alphabet=URLSAFE, min_size=32, max_size=32),
)
def test_an_hpcrag_key_is_redacted_with_no_label_around_it(before: str, after: str, secret: str) -> None:
    key = "hpc-" + secret
    text = before + key + after
    assume(text.count(secret) == 1)
    assert secret not in redact.redact(text)


def test_text_without_credentials_is_left_as_it_is() -> None:
    line = "circuit of nyc/101 opened after 3 failures (last: 503); max_tokens=5 tokens: 40 hpc-node1"
    assert redact.redact(line) == line
    assert redact.redact("Bearer Bearer s3cret") == "Bearer [REDACTED] [REDACTED]"
    assert redact.redact("api_key=--api-key s3cret") == "api_key=[REDACTED] [REDACTED]"


def test_messages_arguments_exceptions_and_stacks_are_redacted(installed, caplog) -> None:
    log = logging.getLogger("hpcrag.test.redact")
    try:
        raise ValueError("upstream refused api_key=exc-secret-123")
    except ValueError:
        log.exception("call with %s failed", "Authorization: Bearer arg-secret-123", stack_info=True)
    log.error("bad format %d", "Bearer fmt-secret-123")
    record = logging.makeLogRecord({"msg": "token=made-secret-123", "levelno": logging.ERROR})
    handler = logging.StreamHandler()
    handler.addFilter(redact.RedactFilter())
    handler.filter(record)
    text = caplog.text + record.getMessage()
    assert "call with Authorization: [REDACTED]\n" in text and "api_key=[REDACTED]" in text
    for secret in ("exc-secret-123", "arg-secret-123", "fmt-secret-123", "made-secret-123"):
        assert secret not in text


def test_the_gateway_logs_no_key_from_oversized_headers_or_request_lines(
    installed, caplog, tmp_path: Path, monkeypatch
) -> None:
    from hpcrag.config import load_config
    from hpcrag.gateway.app import create_app
    from hpcrag.gateway.keys import KeyStore

    monkeypatch.setenv("HPCRAG_GATEWAY_DB", str(tmp_path / "gateway.sqlite"))
    monkeypatch.setenv("HPCRAG_REGISTRY", str(tmp_path / "registry.sqlite"))
    config = load_config(CONFIG_DIR, "dev")
    key = KeyStore(config.resolve_path(config.gateway.database)).create("alice", user_tier="free").encode()
    requests = [
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key + b"A" * 9000 + b"\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: " + key + b"A" * 9000 + b"\r\n\r\n",
        b"GET /v1/models?api_key=" + key + b"B" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /" + key + b"/" + b"C" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer " + key + b"\x00\r\n\r\n",
    ]
    caplog.set_level(logging.DEBUG)

    async def send_all() -> list[bytes]:
        answers = []
        async with TestServer(create_app(config)) as server:
            for request in requests:
                reader, writer = await asyncio.open_connection(server.host, server.port)
                writer.write(request)
                await writer.drain()
                answers.append(await reader.read(100))
                writer.close()
        return answers

    answers = asyncio.run(send_all())
    assert [a.split(b" ")[1] for a in answers] == [b"400"] * len(requests)
    logged = caplog.text + "".join(f"{r.getMessage()}{r.exc_text}" for r in caplog.records)
    assert "Got more than 8190 bytes" in logged and redact.REDACTED in logged
    assert key.decode() not in logged and key[4:20].decode() not in logged
