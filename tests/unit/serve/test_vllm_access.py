"""Who can reach a vLLM server, and how long it lives: the per-start key, where it listens, the key
middleware, the gateway's headers and CA, and the server's death with its supervisor.

The supervisor runs for real here, with a stand-in for vLLM (a small HTTP server that forks a child,
as vLLM forks its engine core), so parent death is checked against real processes in a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcrag.config import load_config
from hpcrag.errors import HpcragError
from hpcrag.gateway.endpoints import EndpointTable
from hpcrag.serve import supervisor
from hpcrag.serve.client import backend_ssl_context
from hpcrag.serve.registry import Endpoint, Registry
from hpcrag.serve.runtime import VLLM_SIDE
from hpcrag.serve.spec import LaunchSpec
from hpcrag.serve.supervisor import Supervisor, server_env, where
from hpcrag.serve.vllm_side.hpcrag_vllm_auth import RequireKey
from tests.conftest import CONFIG_DIR, REPO

KEY = "k" * 43

FAKE_VLLM = r"""
import http.server, json, os, sys, time
args = sys.argv[1:]
host, port = args[args.index("--host") + 1], int(args[args.index("--port") + 1])
child = os.fork()
if child == 0:  # like vLLM's engine core: a child of the server, not of the supervisor
    while True:
        time.sleep(1)
record = os.environ["FAKE_RECORD"]
with open(record + ".tmp", "w") as out:
    json.dump({"argv": args, "key": os.environ.get("VLLM_API_KEY"), "pid": os.getpid(), "child": child,
               "pythonpath": os.environ.get("PYTHONPATH", "")}, out)
os.rename(record + ".tmp", record)

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass

http.server.HTTPServer((host, port), Health).serve_forever()
"""

RUN_SUPERVISOR = """
import pickle, sys
pickle.load(open(sys.argv[1], "rb"))()
"""


def _spec(argv: list[str], env: dict[str, str] | None = None, **changes) -> LaunchSpec:
    base = dict(
        site="nyc", tier="s", partition="tier-s", model="tiny-llama", served_name="tiny-llama",
        gpu_type="l40s", precision="fp32", tp=1, max_model_len=256, per_gpu_gb=1.0, usd_per_hour=0.45,
        argv=argv, env=env or {},
    )  # fmt: skip
    return LaunchSpec(**{**base, **changes})


# --- where a server listens and is registered -------------------------------------------------------


def test_a_server_listens_where_the_site_says_and_is_registered_there(monkeypatch) -> None:
    monkeypatch.setenv("HPCRAG_SERVE_HOST", "node7.example.org")
    assert where(_spec([]), 8001) == ("node7.example.org", "http://node7.example.org:8001")  # never 0.0.0.0
    assert where(_spec([], bind="0.0.0.0"), 8001) == ("0.0.0.0", "http://node7.example.org:8001")
    assert where(_spec([], bind="::"), 8001) == ("::", "http://node7.example.org:8001")
    assert where(_spec([], bind="10.1.2.3"), 8001) == ("10.1.2.3", "http://10.1.2.3:8001")
    assert where(_spec([], bind="fd00::7"), 8001) == ("fd00::7", "http://[fd00::7]:8001")
    tls = _spec([], certfile="/c.pem", keyfile="/k.pem")
    assert where(tls, 8443) == ("node7.example.org", "https://node7.example.org:8443")
    assert tls.argv_with_port("node7", 8443)[-4:] == ["--ssl-certfile", "/c.pem", "--ssl-keyfile", "/k.pem"]


@pytest.fixture
def resolver(monkeypatch):
    """A node whose host name is `node7` and resolves as `names` says (Debian: to 127.0.1.1)."""
    names: dict[str, list[str]] = {}

    def resolve(name: str) -> list[str]:
        if name not in names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return names[name]

    monkeypatch.setattr(supervisor, "resolve", resolve)
    monkeypatch.setattr(socket, "gethostname", lambda: "node7")
    monkeypatch.delenv("HPCRAG_SERVE_HOST", raising=False)
    monkeypatch.delenv("SLURM_SUBMIT_HOST", raising=False)
    return names


def test_a_host_name_that_means_loopback_is_refused_with_the_fix(resolver, monkeypatch) -> None:
    resolver["node7"] = ["127.0.1.1"]
    with pytest.raises(HpcragError) as refused:
        where(_spec([]), 8001)
    message = str(refused.value)
    assert "'node7' (the host name), which resolves to loopback only on this node (127.0.1.1)" in message
    assert "vllm.bind" in message and "$HPCRAG_SERVE_HOST" in message
    resolver["gpu7"] = ["127.0.0.1", "::1"]
    with pytest.raises(HpcragError, match=r"'gpu7' \(vllm.bind\), which resolves to loopback only"):
        where(_spec([], bind="gpu7"), 8001)
    with pytest.raises(HpcragError, match="does not resolve on this node"):
        where(_spec([], bind="nowhere"), 8001)
    # Chosen on purpose: $HPCRAG_SERVE_HOST (one-machine tests), a loopback literal, a wildcard.
    monkeypatch.setenv("HPCRAG_SERVE_HOST", "node7")
    assert where(_spec([]), 8001) == ("node7", "http://node7:8001")
    monkeypatch.delenv("HPCRAG_SERVE_HOST")
    for literal in ("127.0.0.1", "::1", "localhost"):
        assert where(_spec([], bind=literal), 8001)[0] == literal
    assert where(_spec([], bind="0.0.0.0"), 8001) == ("0.0.0.0", "http://node7:8001")


def test_a_host_name_on_the_network_is_served_there(resolver) -> None:
    resolver["node7"] = ["10.1.0.7", "127.0.1.1"]  # loopback too, but not only
    assert where(_spec([]), 8001) == ("node7", "http://node7:8001")
    resolver["gpu7.cluster"] = ["fd00::7"]
    assert where(_spec([], bind="gpu7.cluster"), 8001) == ("gpu7.cluster", "http://gpu7.cluster:8001")


def test_a_job_submitted_from_its_own_host_may_use_loopback(resolver, monkeypatch, capsys) -> None:
    """The local dev clusters: submitter, registry, gateway and server all on one machine."""
    resolver["node7"] = ["127.0.0.1"]
    monkeypatch.setenv("SLURM_SUBMIT_HOST", "login1")
    with pytest.raises(HpcragError, match="loopback only"):
        where(_spec([]), 8001)
    monkeypatch.setenv("SLURM_SUBMIT_HOST", "node7")
    assert where(_spec([]), 8001) == ("node7", "http://node7:8001")
    assert "reachable from this host only" in capsys.readouterr().out


def test_the_key_reaches_vllm_in_its_environment_not_its_argv(monkeypatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/site/lib")
    monkeypatch.setenv("VLLM_API_KEY", "inherited-and-stale")
    env = server_env({"OMP_NUM_THREADS": "1"}, KEY)
    assert env["VLLM_API_KEY"] == KEY and env["OMP_NUM_THREADS"] == "1"
    assert env["PYTHONPATH"] == f"{VLLM_SIDE}{os.pathsep}/site/lib"
    assert (VLLM_SIDE / "hpcrag_vllm_auth.py").is_file()


# --- the supervisor with a stand-in vLLM ------------------------------------------------------------


def _alive(pid: int) -> bool:
    """Running (a zombie, which answers nothing and holds no GPU, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait(probe, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout:.0f} s")
        time.sleep(0.1)
    return value


def _watchdogs_of(leader: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if (
                b"os.killpg(int(sys.argv[1]), signal.SIGKILL)" in b" ".join(argv)
                and str(leader).encode() in argv
            ):
                found.append(int(entry.name))
    return [pid for pid in found if _alive(pid)]


@pytest.fixture
def supervised(tmp_path: Path):
    """Start a supervisor (its own process, as in a Slurm job) around the stand-in; yield its state."""
    import pickle

    fake = tmp_path / "fake vllm.py"
    fake.write_text(FAKE_VLLM)
    record = tmp_path / "record.json"
    spec = _spec([sys.executable, str(fake)], {"FAKE_RECORD": str(record)}, bind="127.0.0.1")
    registry = tmp_path / "registry" / "serving.sqlite"
    pickled = tmp_path / "supervisor.pkl"
    pickled.write_bytes(pickle.dumps(Supervisor(spec, str(registry), 0.5, 30.0)))
    env = {**os.environ, "SLURM_JOB_ID": "4242", "PYTHONPATH": str(REPO / "src")}
    process = subprocess.Popen([sys.executable, "-c", RUN_SUPERVISOR, str(pickled)], env=env)
    try:
        row = _wait(
            lambda: (
                registry.exists() and (r := Registry(registry).find()) and r[0].state == "healthy" and r[0]
            ),
            30,
            "the supervised server healthy",
        )
        yield {"process": process, "row": row, "server": json.loads(record.read_text()), "registry": registry}
    finally:
        process.kill()
        process.wait()


def test_each_start_gets_a_key_only_the_registry_and_vllm_know(supervised) -> None:
    row, server = supervised["row"], supervised["server"]
    assert row.secret and len(row.secret) >= 43 and server["key"] == row.secret
    assert row.url == f"http://127.0.0.1:{server['argv'][server['argv'].index('--port') + 1]}"
    assert server["argv"][server["argv"].index("--host") + 1] == "127.0.0.1"
    # Not on any command line that `ps` shows to everyone on the node.
    for pid in (server["pid"], supervised["process"].pid):
        assert row.secret.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert server["pythonpath"].startswith(str(VLLM_SIDE))
    assert row.secret not in repr(row) and "secret" not in row.public()
    registry = supervised["registry"]
    assert os.stat(registry).st_mode & 0o777 == 0o600
    assert os.stat(registry.parent).st_mode & 0o777 == 0o700


def test_sigkill_of_the_supervisor_takes_the_server_and_its_children(supervised) -> None:
    server = supervised["server"]
    assert _alive(server["pid"]) and _alive(server["child"])
    supervised["process"].send_signal(signal.SIGKILL)
    supervised["process"].wait()
    # Before the fix both outlived it, re-parented to init, the server still answering.
    _wait(lambda: not _alive(server["pid"]), 5, "the server dead (parent-death signal)")
    _wait(lambda: not _alive(server["child"]), 5, "the server's child dead (watchdog)")
    _wait(lambda: not _watchdogs_of(server["pid"]), 5, "the watchdog gone")


def test_a_clean_stop_sends_the_watchdog_away(supervised) -> None:
    server = supervised["server"]
    assert _watchdogs_of(server["pid"])
    supervised["process"].send_signal(signal.SIGTERM)
    assert supervised["process"].wait(timeout=30) == 0
    assert not _alive(server["pid"]) and not _alive(server["child"])
    row = Registry(supervised["registry"]).find()[0]
    assert row.state == "stopped" and row.url is None
    assert row.secret is None, "the stopped server's key lingers in the registry"
    (row,) = Registry(supervised["registry"]).find()
    assert row.state == "stopped"
    _wait(lambda: not _watchdogs_of(server["pid"]), 5, "the watchdog gone")


# --- the key middleware inside vLLM ------------------------------------------------------------------


async def _app(scope, receive, send) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.accept"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"served"})


def _call(scope: dict) -> list[dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(RequireKey(_app)({"headers": [], **scope}, receive, send))
    return sent


def _status(sent: list[dict]) -> int | str:
    return sent[0].get("status") or sent[0]["type"]


@pytest.fixture
def keyed(monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", KEY)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.one_of(
        st.sampled_from(
            ["/invocations", "/tokenize", "/pooling", "/score", "/v1/models", "/health/", "//health"]
        ),
        st.text(min_size=0, max_size=40).map(lambda t: "/" + t),
    ),
    method=st.sampled_from(["GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE"]),
    authorization=st.one_of(
        st.none(), st.text(max_size=60), st.sampled_from([f"Basic {KEY}", KEY, f"Bearer {KEY}x", "Bearer "])
    ),
)
def test_nothing_but_health_and_metrics_answers_without_the_key(keyed, path, method, authorization) -> None:
    headers = [] if authorization is None else [(b"authorization", authorization.encode("utf-8", "replace"))]
    sent = _call({"type": "http", "path": path, "method": method, "headers": headers})
    if method in ("GET", "HEAD") and path in ("/health", "/metrics"):
        assert _status(sent) == 200
    else:
        assert _status(sent) == 401 and json.loads(sent[1]["body"]) == {"error": "Unauthorized"}


def test_the_key_opens_every_path_with_any_case_of_bearer(keyed) -> None:
    for scheme in ("Bearer", "bearer", "BEARER"):
        header = [(b"authorization", f"{scheme} {KEY}".encode())]
        assert (
            _status(_call({"type": "http", "path": "/invocations", "method": "POST", "headers": header}))
            == 200
        )
    vllm_root = {"type": "http", "path": "/api/health", "root_path": "/api", "method": "GET"}
    assert _status(_call(vllm_root)) == 200
    assert _call({"type": "websocket", "path": "/v1/realtime"}) == [{"type": "websocket.close", "code": 1008}]
    assert _call({"type": "lifespan", "path": ""}) == [
        {"type": "http.response.start", "status": 200, "headers": []},
        {"type": "http.response.body", "body": b"served"},
    ]


def test_the_middleware_refuses_to_run_without_a_key(monkeypatch) -> None:
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    with pytest.raises(RuntimeError, match="VLLM_API_KEY is not set"):
        RequireKey(_app)


# --- the gateway's side ------------------------------------------------------------------------------


def _row(secret: str | None, url: str = "http://node7:8000") -> Endpoint:
    return Endpoint(
        provider="slurm", site="nyc", job_id="1", tier="s", model="tiny-llama", served_name="tiny-llama",
        state="healthy", gpu_type="l40s", gpus=1, url=url, secret=secret,
    )  # fmt: skip


def test_the_gateway_sends_each_server_its_own_key() -> None:
    config = load_config(CONFIG_DIR, "dev")
    table = EndpointTable(config)
    table.sync([_row(KEY)], now=0)
    (live,) = table.live()
    assert live.upstream_headers == {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    table.sync([_row(None, "http://cloud:8000")], now=0)  # a server started without a key (cloud)
    assert table.live()[0].upstream_headers == {"Content-Type": "application/json"}


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> bool:
    """Does `client` accept the certificate that `server` presents as localhost?"""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with contextlib.suppress(OSError), server.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with (
            socket.create_connection(listener.getsockname()) as raw,
            client.wrap_socket(raw, server_hostname="localhost"),
        ):
            return True
    except ssl.SSLCertVerificationError:
        return False
    finally:
        thread.join(5)
        listener.close()


def test_the_gateway_trusts_the_backend_ca_from_the_config(config_copy: Path, tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(server)
    assert not _handshake(backend_ssl_context(load_config(config_copy, "production")), server)
    serving = config_copy / "serving.yaml"
    serving.write_text(serving.read_text() + f"backend_ca: {tmp_path / 'ca.pem'}\n")
    assert _handshake(backend_ssl_context(load_config(config_copy, "production")), server)


@contextlib.contextmanager
def _https_metrics(ca: trustme.CA):
    """An https server for `localhost` signed by `ca`, answering vLLM's load metrics; yields its URL."""
    import http.server

    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(server_context)

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"vllm:num_requests_waiting 3.0\nvllm:num_requests_running 1.0\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Metrics)
    httpd.socket = server_context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"https://localhost:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


def test_load_sampling_reads_https_servers_with_the_backend_ca(tmp_path: Path) -> None:
    from hpcrag.serve.load import scrape

    ca = trustme.CA()
    with _https_metrics(ca) as url:
        assert scrape(url) is None  # the system's CAs do not know this one
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        load = scrape(url, verify=ssl.create_default_context(cafile=str(tmp_path / "ca.pem")))
        assert load is not None and (load.waiting, load.running) == (3.0, 1.0)


def _with_backend_ca(config_copy: Path, tmp_path: Path) -> trustme.CA:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    serving = config_copy / "serving.yaml"
    serving.write_text(serving.read_text() + f"backend_ca: {tmp_path / 'ca.pem'}\n")
    return ca


def test_the_burst_policy_reads_https_servers_with_the_backend_ca(
    config_copy: Path, tmp_path: Path, monkeypatch
) -> None:
    """A busy burst server signed by the site's CA is seen busy (before: unreadable, so idle)."""
    from hpcrag.serve.burst import policy

    ca = _with_backend_ca(config_copy, tmp_path)
    config = load_config(config_copy, "production")
    registry = Registry(tmp_path / "serving.sqlite")

    class Adapter:
        def refresh(self, endpoint: Endpoint) -> dict:
            return {}

        def terminate(self, endpoint: Endpoint) -> None:
            raise AssertionError("a busy server was scaled down")

    monkeypatch.setattr(policy, "adapter_for", lambda config, provider: Adapter())
    with _https_metrics(ca) as url:
        row = _row(None, url)
        registry.add(Endpoint(**{**row.__dict__, "id": None, "provider": "aws", "healthy_at": 0.0}))
        assert policy.BurstPolicy(config, registry)._scale_down("s", 0.0) == []
    (seen,) = registry.find(provider="aws")
    assert seen.details.get("last_busy_at"), "the https server's load was not read"


def test_serve_burst_samples_https_servers_with_the_backend_ca(
    config_copy: Path, tmp_path: Path, monkeypatch
) -> None:
    from click.testing import CliRunner

    from hpcrag.cli.main import cli
    from hpcrag.serve import load as tier_load

    ca = _with_backend_ca(config_copy, tmp_path)
    samples = []
    real_sample = tier_load.sample

    def sample(*args, **kwargs):
        samples.append(real_sample(*args, **kwargs))
        return samples[-1]

    monkeypatch.setattr(tier_load, "sample", sample)
    with _https_metrics(ca) as url:
        Registry(tmp_path / "serving.sqlite").add(_row(None, url))
        env = {
            "HPCRAG_CONFIG_DIR": str(config_copy),
            "HPCRAG_PROFILE": "production",
            "HPCRAG_REGISTRY": str(tmp_path / "serving.sqlite"),
        }
        result = CliRunner().invoke(cli, ["serve", "burst", "--tier", "s", "--interval", "0"], env=env)
    assert result.exit_code == 0, result.output
    assert len(samples) == 2 and all(url in s.servers for s in samples), "https servers not read"
