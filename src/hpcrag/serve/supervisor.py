"""The in-job supervisor of one vLLM server: start, wait for health, register, heartbeat, leave.

It runs inside the Slurm job, either as a submitit callable (`hpcrag serve up`) or in the foreground
(`hpcrag serve run`, from `slurm/vllm-tier.sbatch`). vLLM is a child process whose output goes to the
job's log. The supervisor picks a free port, starts vLLM where the site's `vllm.bind` says (by default
the node's advertised address, never every interface unless the site asks for 0.0.0.0), advertises
http(s)://HOST:PORT in the registry with a fresh per-start API key, refreshes a heartbeat, and records
how the server ended:

- vLLM exits on its own: state `failed` with its exit code, and the job fails, so Slurm shows it;
- `scancel` (SIGTERM): vLLM is stopped and the row becomes `stopped`;
- time limit or preemption (SIGUSR2, `--signal`): vLLM is stopped, the row becomes `requeued`, and the
  job is requeued (by submitit through `checkpoint()`, or with `scontrol requeue` in the foreground);
- the supervisor itself is killed (SIGKILL, OOM): vLLM gets SIGKILL from the kernel (a parent-death
  signal), and so does the rest of its process group (see `guard_group`).

The key reaches vLLM in its environment (VLLM_API_KEY), not its argv, which `ps` shows to everyone on
the node; only the registry row (readable by its owner) and vLLM's environment hold it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

from hpcrag.errors import HpcragError
from hpcrag.serve.health import is_healthy
from hpcrag.serve.registry import Endpoint, Registry, now
from hpcrag.serve.runtime import VLLM_SIDE
from hpcrag.serve.spec import LaunchSpec

PROVIDER = "slurm"
STOP_GRACE_S = 20.0
WILDCARDS = ("0.0.0.0", "::")
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class ServerFailedError(HpcragError):
    """vLLM exited, or never became healthy."""


@dataclass
class Supervisor:
    spec: LaunchSpec
    registry_path: str
    heartbeat_s: float
    health_timeout_s: float
    registry_journal: str = "wal"

    def __post_init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._guard: int | None = None
        self._ending: str | None = None
        self._opened: Registry | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__post_init__()

    @property
    def job_id(self) -> str:
        try:
            return os.environ["SLURM_JOB_ID"]
        except KeyError:
            raise HpcragError("the supervisor runs inside a Slurm job (SLURM_JOB_ID is not set)") from None

    def _registry(self) -> Registry:
        # Opened once per run (the schema check is not repeated at every heartbeat).
        if self._opened is None:
            self._opened = Registry(self.registry_path, self.registry_journal)
        return self._opened

    def _update(self, **changes: Any) -> None:
        self._registry().update(PROVIDER, self.spec.site, self.job_id, **changes)

    def __call__(self) -> str:
        """Serve until vLLM exits or the job is stopped; returns the URL that was served."""
        signal.signal(signal.SIGTERM, self._on_term)
        port = free_port()
        try:
            listen, url = where(self.spec, port)
        except HpcragError as exc:
            with contextlib.suppress(HpcragError):  # the submitter's row, when it is there already
                self._update(state="failed", stopped_at=now(), message=str(exc), secret=None)
            raise
        secret = secrets.token_urlsafe(32)
        self._register(url, secret)
        print(f"hpcrag: starting vLLM for tier {self.spec.tier} on {url} (listening on {listen})", flush=True)
        # Its own process group: vLLM's engine and worker processes are stopped with it, even when
        # the API server itself was killed and left them behind. Started from this (the main) thread,
        # which lives as long as the supervisor: the parent-death signal follows the forking thread.
        # No preexec_fn (unsafe when the process has threads, as under submitit): a small Python
        # wrapper sets the parent-death signal and then execs vLLM, which keeps it.
        self._process = subprocess.Popen(
            die_with_parent(self.spec.argv_with_port(listen, port)),
            env=server_env(self.spec.env, secret),
            start_new_session=True,
        )
        self._guard = guard_group(self._process.pid)
        stop_heartbeat = threading.Event()
        try:
            self._wait_healthy(url)
            self._update(state="healthy", healthy_at=now(), heartbeat_at=now())
            print(f"hpcrag: vLLM healthy on {url}", flush=True)
            # Heartbeats come from a thread, so that a signal handler's registry write on the main
            # thread never waits for a transaction that the main thread itself holds.
            threading.Thread(target=self._heartbeat, args=(stop_heartbeat,), daemon=True).start()
            # poll(), never wait(): a signal handler that stops vLLM must not find Popen's wait lock
            # held by the very frame it interrupted.
            while (code := self._process.poll()) is None:
                time.sleep(0.5)
            if self._ending is None:
                self._fail(f"vLLM exited with code {code}")
        finally:
            stop_heartbeat.set()
            self._stop_process()
        return url

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            if self._ending is None:
                self._update(heartbeat_at=now())

    def checkpoint(self) -> Any:
        """submitit's hook on time limit or preemption: stop cleanly and ask to be requeued."""
        import submitit

        self.stop_for_requeue("time limit or preemption signal")
        return submitit.helpers.DelayedSubmission(
            Supervisor(
                self.spec, self.registry_path, self.heartbeat_s, self.health_timeout_s, self.registry_journal
            )
        )

    def stop_for_requeue(self, why: str) -> None:
        self._ending = "requeued"
        self._stop_process()
        # The key dies with the server (the requeued job makes a new one): none lingers in the registry.
        self._update(state="requeued", restarts="+1", message=f"requeued: {why}", url=None, secret=None)
        print(f"hpcrag: vLLM stopped for requeue ({why})", flush=True)

    def _register(self, url: str, secret: str) -> None:
        """Announce this start; a job submitted by hand (vllm-tier.sbatch) creates its own row."""
        self._registry().add(
            Endpoint(
                provider=PROVIDER,
                site=self.spec.site,
                job_id=self.job_id,
                tier=self.spec.tier,
                model=self.spec.model,
                served_name=self.spec.served_name,
                state="starting",
                gpu_type=self.spec.gpu_type,
                gpus=self.spec.gpus,
                url=url,
                usd_per_hour=self.spec.usd_per_hour,
                log_path=os.environ.get("HPCRAG_LOG_PATH"),
                submitted_at=now(),
                started_at=now(),
                message="",
                secret=secret,
            ),
            update=("state", "url", "secret", "started_at", "healthy_at", "message"),
        )

    def _wait_healthy(self, url: str) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.health_timeout_s
        # Its own child, on the URL clients use: the certificate is the gateway's to verify, and
        # /health carries no key.
        while not is_healthy(url, verify=False):
            code = self._process.poll()
            if code is not None:
                self._fail(f"vLLM exited with code {code} before it became healthy")
            if time.monotonic() > deadline:
                self._fail(f"vLLM not healthy after {self.health_timeout_s:.0f} s")
            time.sleep(1.0)

    def _fail(self, message: str) -> None:
        self._ending = "failed"
        self._update(state="failed", stopped_at=now(), message=message, secret=None)
        raise ServerFailedError(f"{message}; see this job's log")

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        if self._ending == "requeued":
            # Slurm's requeue itself ends the job with TERM: the row must stay `requeued`.
            sys.exit(0)
        print("hpcrag: SIGTERM (scancel): stopping vLLM", flush=True)
        self._ending = "stopped"
        self._stop_process()
        self._update(
            state="stopped",
            stopped_at=now(),
            url=None,
            secret=None,  # useless once the server is gone: it must not linger in the registry
            message="stopped by SIGTERM (scancel)",
        )
        sys.exit(0)

    def _stop_process(self) -> None:
        """TERM to vLLM's process group, then KILL after STOP_GRACE_S; polls only, so it is safe
        inside signal handlers. The group is killed even when the server has already exited."""
        process = self._process
        if process is None:
            return
        for sig, grace in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
            if process.poll() is not None:
                break
            _signal_group(process.pid, sig)
            deadline = time.monotonic() + grace
            while process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
        _signal_group(process.pid, signal.SIGKILL)  # orphaned engine and worker processes
        if self._guard is not None:
            guard, self._guard = self._guard, None
            stand_down(guard)


def _signal_group(leader: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(leader, sig)


# The watchdog: one byte from the supervisor means "stopped cleanly"; end of file means the supervisor
# is gone (its pipe closes whenever it dies, SIGKILL included), and the group is killed.
_WATCHDOG = """
import os, signal, sys
if os.read(0, 1) == b"":
    try:
        os.killpg(int(sys.argv[1]), signal.SIGKILL)
    except ProcessLookupError:
        pass
"""


def guard_group(leader: int) -> int:
    """Start a watchdog that SIGKILLs the process group `leader` if this process dies; returns the
    pipe to hand to `stand_down` after a clean stop.

    The parent-death signal reaches only vLLM's API server: the kernel clears it in forked children,
    and vLLM's engine core and workers (which hold the GPUs) outlive the server, re-parented to init.
    The watchdog is a separate process in its own session, so that neither the supervisor's death nor
    Slurm's cleanup of the supervisor's process group takes it down before it has acted.
    """
    read, write = os.pipe()
    try:
        subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(leader)], stdin=read, start_new_session=True
        )
    finally:
        os.close(read)
    return write


def stand_down(guard: int) -> None:
    with contextlib.suppress(OSError):
        os.write(guard, b"x")
    os.close(guard)


def server_env(spec_env: dict[str, str], secret: str) -> dict[str, str]:
    """vLLM's environment: the job's, the site's, the key, and the key middleware on PYTHONPATH."""
    env = {**os.environ, **spec_env, "VLLM_API_KEY": secret}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(VLLM_SIDE), env.get("PYTHONPATH")) if p)
    return env


# Run in the child between fork and vLLM: SIGKILL it when the thread that forked it dies (Linux prctl;
# the setting survives execve), then become vLLM. argv: the parent's pid, then vLLM's command line.
_DIE_WITH_PARENT = f"""
import ctypes, os, signal, sys
parent, argv = int(sys.argv[1]), sys.argv[2:]
if ctypes.CDLL(None, use_errno=True).prctl({PR_SET_PDEATHSIG}, signal.SIGKILL, 0, 0, 0) != 0:
    sys.exit(126)
if os.getppid() != parent:  # the parent died before prctl: nobody would ever send the signal
    sys.exit(1)
try:
    os.execvp(argv[0], argv)
except OSError as exc:
    sys.stderr.write(f"hpcrag: cannot start {{argv[0]}}: {{exc.strerror or exc}}\\n")
    sys.exit(127)
"""


def die_with_parent(argv: list[str]) -> list[str]:
    """`argv` run so that the kernel SIGKILLs it when this process (its forking thread) dies."""
    return [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *argv]


def where(spec: LaunchSpec, port: int) -> tuple[str, str]:
    """(the address vLLM listens on, the URL it is registered at): the site's `vllm.bind`, else the
    node's advertised name; a wildcard bind is registered under the advertised name.

    A name is resolved first: one that means only loopback here (Debian maps a node's own name to
    127.0.1.1) would have vLLM listen where no other node reaches it, behind a URL that looks right.
    That is an error, unless the name was chosen on purpose: $HPCRAG_SERVE_HOST, a loopback literal
    (127.0.0.1, ::1, localhost), or a job submitted from this very host (the local dev clusters),
    where the registry's readers are on the same machine.
    """
    listen = spec.bind or advertised_host()
    host = advertised_host() if listen in WILDCARDS else listen
    chosen = spec.bind is None and bool(os.environ.get("HPCRAG_SERVE_HOST"))
    if listen not in WILDCARDS and not chosen:
        check_reachable_bind(listen, "vllm.bind" if spec.bind else "the host name")
    return listen, f"{spec.scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def resolve(name: str) -> list[str]:
    """The addresses `name` resolves to on this node (a seam for tests)."""
    return sorted({info[4][0] for info in socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)})


def check_reachable_bind(name: str, origin: str) -> None:
    if name == "localhost" or _is_address(name):
        return  # an address, not a name: what it says is what the site meant
    fix = (
        "set the site's vllm.bind (site-configs) to this node's network address, or its name on the "
        "cluster network, or $HPCRAG_SERVE_HOST in the job's environment; vllm.bind: 0.0.0.0 listens "
        "on every interface"
    )
    try:
        addresses = resolve(name)
    except (OSError, UnicodeError) as exc:
        raise HpcragError(
            f"vLLM would listen on {name!r} ({origin}), which does not resolve on this node "
            f"({getattr(exc, 'strerror', None) or exc}); {fix}"
        ) from None
    if addresses and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        if _submitted_here():
            print(
                f"hpcrag: {name!r} resolves to loopback only ({', '.join(addresses)}): this server is "
                "reachable from this host only (the job was submitted here)",
                flush=True,
            )
            return
        raise HpcragError(
            f"vLLM would listen on {name!r} ({origin}), which resolves to loopback only on this node "
            f"({', '.join(addresses)}): no other node could reach the URL registered for it; {fix}"
        )


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.split("%")[0])
    except ValueError:
        return False
    return True


def _submitted_here() -> bool:
    """The job was submitted from this host (sbatch's SLURM_SUBMIT_HOST): one machine, as in the dev
    clusters, whose clients reach loopback too."""
    submitter = os.environ.get("SLURM_SUBMIT_HOST", "")
    return bool(submitter) and submitter.split(".")[0] == socket.gethostname().split(".")[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def advertised_host() -> str:
    """The name clients use to reach this node: $HPCRAG_SERVE_HOST, else the host's own name."""
    return os.environ.get("HPCRAG_SERVE_HOST") or socket.gethostname()


def run_foreground(supervisor: Supervisor) -> str:
    """Serve from a batch script: SIGUSR2 (time limit, preemption) requeues the job itself."""
    from hpcrag.slurm.command import run_command

    def on_usr2(signum: int, frame: FrameType | None) -> None:
        supervisor.stop_for_requeue("time limit or preemption signal")
        run_command(["scontrol", "requeue", supervisor.job_id])
        sys.exit(0)

    signal.signal(signal.SIGUSR2, on_usr2)
    return supervisor()
