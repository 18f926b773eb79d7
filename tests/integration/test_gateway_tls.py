"""The gateway over HTTPS (a local CA made by trustme): the openai client with the CA, plain HTTP
refused, client certificates when asked for; /metrics on a listener of its own."""

from __future__ import annotations

import shutil
import ssl

import httpx
import openai
import pytest
import trustme
import yaml

from hpcrag.serve.registry import Registry
from tests.conftest import CONFIG_DIR
from tests.integration.gateway_helpers import HPCRAG, free_port, hpcrag, metric, row, running, stub


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("alice@example.org")
    paths = {
        "ca": folder / "ca.pem",
        "cert": folder / "server.pem",
        "key": folder / "server.key",
        "client": folder / "client.pem",
    }
    ca.cert_pem.write_to_path(paths["ca"])
    server.private_key_pem.write_to_path(paths["key"])
    for blob in server.cert_chain_pems:
        blob.write_to_path(paths["cert"], append=True)
    client.private_key_and_cert_chain_pem.write_to_path(paths["client"])
    return paths


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    config_dir = tmp / "site configs"
    shutil.copytree(CONFIG_DIR, config_dir)
    metrics_port = free_port()
    settings_path = config_dir / "gateway.yaml"
    settings = yaml.safe_load(settings_path.read_text())
    settings.update(refresh_s=0.5, metrics_listen=f"127.0.0.1:{metrics_port}")
    settings_path.write_text(yaml.safe_dump(settings, sort_keys=False))
    env = {
        "HPCRAG_CONFIG_DIR": str(config_dir),
        "HPCRAG_REGISTRY": str(tmp / "registry.sqlite"),
        "HPCRAG_GATEWAY_DB": str(tmp / "gateway.sqlite"),
    }
    backend = free_port()
    Registry(env["HPCRAG_REGISTRY"]).add(row("nyc", "101", "s", "small", backend, 0.45))
    key = hpcrag(env, "gateway", "keys", "add", "alice").strip()
    with running(stub(backend, "small"), env, f"http://127.0.0.1:{backend}/health", tmp / "s.log"):
        yield {"env": env, "key": key, "tmp": tmp, "metrics_port": metrics_port, "config_dir": config_dir}


def gateway(world, pki, *extra: str):
    port = free_port()
    command = [HPCRAG, "gateway", "serve", "--port", str(port), "--tls-cert", str(pki["cert"])]
    command += ["--tls-key", str(pki["key"]), *extra]
    # The metrics listener speaks plain HTTP: it tells when the gateway is up.
    health = f"http://127.0.0.1:{world['metrics_port']}/metrics"
    return port, running(command, world["env"], health, world["tmp"] / f"gw-{port}.log")


def test_https_with_the_ca_and_no_plain_http(world, pki) -> None:
    port, process = gateway(world, pki)
    with process:
        url = f"https://127.0.0.1:{port}"
        client = openai.OpenAI(
            base_url=url + "/v1",
            api_key=world["key"],
            max_retries=0,
            http_client=httpx.Client(verify=ssl.create_default_context(cafile=str(pki["ca"]))),
        )
        reply = client.chat.completions.create(model="tier-s", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content.startswith("alpha")
        with pytest.raises(httpx.ConnectError):  # not trusted without the CA
            httpx.get(url + "/health")
        with pytest.raises(httpx.RemoteProtocolError):  # plain HTTP is not spoken on this port
            httpx.get(f"http://127.0.0.1:{port}/health")
        # /metrics: open on its own listener, closed on the API port (no metrics token set).
        text = httpx.get(f"http://127.0.0.1:{world['metrics_port']}/metrics").text
        assert metric(text, "hpcrag_gateway_requests_total", tier="s", status="200") == 1
        closed = httpx.get(url + "/metrics", verify=ssl.create_default_context(cafile=str(pki["ca"])))
        assert closed.status_code == 404 and "metrics_listen" in closed.json()["error"]["message"]


def test_client_certificates_when_a_client_ca_is_given(world, pki) -> None:
    port, process = gateway(world, pki, "--tls-client-ca", str(pki["ca"]))
    with process:
        url = f"https://127.0.0.1:{port}/health"
        without = ssl.create_default_context(cafile=str(pki["ca"]))
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            httpx.get(url, verify=without)
        with_cert = ssl.create_default_context(cafile=str(pki["ca"]))
        with_cert.load_cert_chain(str(pki["client"]))
        assert httpx.get(url, verify=with_cert).status_code == 200
