"""TLS on the search service with a locally made CA (trustme): HTTPS with the CA works, plain HTTP to
the TLS port fails, and a required client certificate is really required."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import numpy as np
import pytest
import trustme

from hpcrag.errors import HpcragError
from hpcrag.search.client import SearchClient
from hpcrag.search.service import ServiceOptions
from hpcrag.search.synthetic import clustered
from hpcrag.util.tls import client_context, server_context
from tests.search_helpers import build_small
from tests.unit.search.service_helpers import TOKEN, running_service

BASE, QUERIES = clustered(300, 5, 8, clusters=3, seed=4)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("search-client@example")
    other_ca = trustme.CA()
    paths = {name: root / f"{name}.pem" for name in ("ca", "cert", "key", "client", "client_key", "other_ca")}
    ca.cert_pem.write_to_path(paths["ca"])
    server.cert_chain_pems[0].write_to_path(paths["cert"])
    server.private_key_pem.write_to_path(paths["key"])
    client.cert_chain_pems[0].write_to_path(paths["client"])
    client.private_key_pem.write_to_path(paths["client_key"])
    other_ca.cert_pem.write_to_path(paths["other_ca"])
    return paths


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_small(tmp_path_factory.mktemp("tls"), BASE, nlist=4, nshards=1)


def test_https_with_the_ca_and_plain_http_refused(pki: dict[str, Path], index_dir: Path) -> None:
    tls = server_context(pki["cert"], pki["key"])
    with running_service(index_dir, ServiceOptions(port=0, tls=tls)) as (service, thread):
        assert service.url.startswith("https://127.0.0.1:")
        with SearchClient(service.url, token=TOKEN, ca=pki["ca"]) as client:
            assert client.search(QUERIES, k=3, nprobe=4).ids.shape == (5, 3)
        with pytest.raises(httpx.TransportError):
            httpx.get(service.url.replace("https://", "http://") + "/health", timeout=5)
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{service.url}/health", verify=client_context(pki["other_ca"]), timeout=5)
        assert thread.is_alive()


def test_a_required_client_certificate_is_required(pki: dict[str, Path], index_dir: Path) -> None:
    tls = server_context(pki["cert"], pki["key"], client_ca=pki["ca"])
    with running_service(index_dir, ServiceOptions(port=0, tls=tls)) as (service, _):
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{service.url}/health", verify=client_context(pki["ca"]), timeout=5).raise_for_status()
        with SearchClient(
            service.url, token=TOKEN, ca=pki["ca"], cert=pki["client"], key=pki["client_key"]
        ) as c:
            np.testing.assert_array_equal(
                c.search(QUERIES, k=3, nprobe=4).ids, service.index.search(QUERIES, k=3, nprobe=4).ids
            )


def test_file_problems_name_the_file_and_the_fix(pki: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(HpcragError, match=r"--tls-cert .*missing.pem does not exist; give the path of a PEM"):
        server_context(tmp_path / "missing.pem", pki["key"])
    with pytest.raises(HpcragError, match=r"--tls-key .*key.pem does not belong to --tls-cert"):
        server_context(pki["client"], pki["key"])
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(HpcragError, match=r"garbage.pem .*not a PEM certificate chain"):
        server_context(garbage, pki["key"])
    with pytest.raises(HpcragError, match=r"--tls-client-ca .*garbage.pem holds no PEM CA certificate"):
        server_context(pki["cert"], pki["key"], client_ca=garbage)
    with pytest.raises(HpcragError, match="needs both its certificate file and its key file"):
        client_context(pki["ca"], cert=pki["client"])
    unreadable = tmp_path / "unreadable.pem"
    unreadable.mkdir()
    with pytest.raises(HpcragError, match=r"unreadable\.pem does not exist"):
        client_context(unreadable)


def test_an_encrypted_key_is_refused_without_a_prompt(pki: dict[str, Path], tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki["key"].read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(HpcragError, match=r"encrypted\.pem is encrypted; give an unencrypted key"):
        server_context(pki["cert"], encrypted)


def test_contexts_require_tls_1_2(pki: dict[str, Path]) -> None:
    assert server_context(pki["cert"], pki["key"]).minimum_version == ssl.TLSVersion.TLSv1_2
    assert client_context(pki["ca"]).minimum_version == ssl.TLSVersion.TLSv1_2
    assert server_context(pki["cert"], pki["key"], pki["ca"]).verify_mode == ssl.CERT_REQUIRED
