"""The local multi-site Slurm of a local profile: munge, MariaDB and one slurmdbd shared by all sites,
and per site one slurmctld plus one slurmd per node, all under the profile's run directory.

`up` is idempotent (running daemons with an unchanged config are left alone; a changed config
restarts that site's daemons), `down` leaves no process behind, `status` reports every daemon.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hpcrag.config import Config
from hpcrag.devcluster import processes
from hpcrag.errors import HpcragError
from hpcrag.slurm.command import run_command
from hpcrag.slurm.conf import render_gres_conf, render_slurm_conf, render_slurmdbd_conf, run_paths
from hpcrag.slurm.target import SlurmTarget
from hpcrag.util.files import write_atomic

REQUIRED_TOOLS = (
    "munged",
    "mungekey",
    "munge",
    "mariadbd",
    "mariadb-install-db",
    "mariadb-admin",
    "mariadb",
    "slurmdbd",
    "slurmctld",
    "slurmd",
    "sacctmgr",
    "sinfo",
    "scontrol",
)
READY_STATES = {"idle", "mixed", "allocated", "completing"}


class DevClusterError(HpcragError):
    """The local clusters could not be brought up, or are not in the expected state."""


@dataclass(frozen=True)
class Daemon:
    name: str
    site: str
    pid_file: Path
    log: Path
    node: str | None = None

    @property
    def where(self) -> str:
        return f"{self.site}/{self.node}" if self.node else self.site

    @property
    def pid(self) -> int | None:
        return processes.running_pid(self.pid_file, self.name)


class DevCluster:
    def __init__(self, config: Config, log: Callable[[str], None] = print) -> None:
        if not config.profile.is_local:
            raise DevClusterError(
                f"profile {config.profile.name!r} maps no site onto a local cluster; "
                "use a local profile (--profile dev or HPCRAG_PROFILE=dev)"
            )
        assert config.profile.run_dir is not None and config.profile.accounting is not None
        self.config = config
        self.profile = config.profile
        self.accounting = config.profile.accounting
        self.root = Path(config.profile.run_dir)
        self.sites = list(config.profile.sites)
        self.log = log

    # ---- the daemons ---------------------------------------------------------------------
    def daemons(self) -> list[Daemon]:
        root = self.root
        found = [
            Daemon("munged", "-", root / "munge" / "munged.pid", root / "munge" / "munged.log"),
            Daemon("mariadbd", "-", root / "mariadb" / "mariadbd.pid", root / "mariadb" / "error.log"),
            Daemon("slurmdbd", "-", root / "dbd" / "slurmdbd.pid", root / "dbd" / "slurmdbd.log"),
        ]
        for site in self.sites:
            paths = run_paths(self.profile, site)
            found.append(
                Daemon("slurmctld", site, paths["base"] / "slurmctld.pid", paths["log"] / "slurmctld.log")
            )
            for node in self.config.site(site).node_names:
                found.append(
                    Daemon(
                        "slurmd",
                        site,
                        paths["base"] / f"slurmd-{node}.pid",
                        paths["log"] / f"slurmd-{node}.log",
                        node=node,
                    )
                )
        return found

    # ---- up ------------------------------------------------------------------------------
    def up(self, timeout: float = 90.0) -> float:
        """Start whatever is not running and wait until every node is usable; returns seconds taken."""
        started = time.monotonic()
        self._check_prerequisites()
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self._munge()
        self._mariadb()
        self._slurmdbd()
        for site in self.sites:
            self._site(site)
        deadline = started + timeout
        for site in self.sites:
            self._wait_ready(site, deadline)
        return time.monotonic() - started

    def _check_prerequisites(self) -> None:
        if os.geteuid() != 0:
            raise DevClusterError("the local clusters run as root (device nodes, slurmd): run as root")
        missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
        if missing:
            raise DevClusterError(f"missing programs: {', '.join(missing)}; install them with `make setup`")

    def _munge(self) -> None:
        sock_dir, key_dir = self.root / "munge", self.root / "munge-key"
        sock_dir.mkdir(exist_ok=True)
        key_dir.mkdir(exist_ok=True)
        # munged insists: the socket directory readable by all, the key directory by root alone.
        sock_dir.chmod(0o755)
        key_dir.chmod(0o700)
        key = key_dir / "munge.key"
        if not key.exists():
            run_command(["mungekey", "--create", f"--keyfile={key}"])
        key.chmod(0o400)
        if self._daemon("munged").pid:
            return
        run_command(
            [
                "munged",
                f"--socket={sock_dir / 'munge.socket.2'}",
                f"--key-file={key}",
                f"--pid-file={sock_dir / 'munged.pid'}",
                f"--log-file={sock_dir / 'munged.log'}",
                f"--seed-file={key_dir / 'munged.seed'}",
                "--num-threads=10",
            ]
        )
        run_command(["munge", "-n", "-S", str(sock_dir / "munge.socket.2")])
        self.log("munged: started")

    def _mariadb(self) -> None:
        base = self.root / "mariadb"
        data = base / "data"
        sock = base / "mysqld.sock"
        base.mkdir(exist_ok=True)
        if not (data / "mysql").is_dir():
            run_command(
                [
                    "mariadb-install-db",
                    "--user=root",
                    f"--datadir={data}",
                    "--auth-root-authentication-method=socket",
                    "--skip-test-db",
                ],
                timeout=120,
            )
        if not self._daemon("mariadbd").pid:
            args = [
                "mariadbd",
                "--user=root",
                f"--datadir={data}",
                f"--socket={sock}",
                f"--port={self.accounting.mariadb_port}",
                "--bind-address=127.0.0.1",
                f"--pid-file={base / 'mariadbd.pid'}",
                f"--log-error={base / 'error.log'}",
                "--innodb-buffer-pool-size=256M",
                "--innodb-lock-wait-timeout=900",
                "--skip-name-resolve",
            ]
            # mariadbd does not daemonize itself: detach it into its own session.
            subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            self._wait(
                lambda: _succeeds(["mariadb-admin", f"--socket={sock}", "ping"]),
                30,
                f"MariaDB did not start; see {base / 'error.log'}",
            )
            self.log("mariadbd: started")
        password = self._db_password()
        sql = (
            f"CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '{password}';"
            f"ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{password}';"
            "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
        )
        run_command(["mariadb", f"--socket={sock}", "-e", sql])

    def _db_password(self) -> str:
        file = self.root / "mariadb" / "slurm.password"
        if not file.exists():
            write_atomic(file, secrets.token_hex(16), mode=0o600)
        return file.read_text().strip()

    def _slurmdbd(self) -> None:
        base = self.root / "dbd"
        base.mkdir(exist_ok=True)
        changed = write_atomic(
            base / "slurmdbd.conf", render_slurmdbd_conf(self.profile, self._db_password()), mode=0o600
        )
        daemon = self._daemon("slurmdbd")
        if daemon.pid and changed:
            processes.stop([daemon.pid])
        if not daemon.pid:
            # slurmdbd reads slurmdbd.conf from the directory of $SLURM_CONF.
            run_command(["slurmdbd"], env={"SLURM_CONF": str(base / "slurm.conf")})
            self._wait(
                lambda: _port_open(self.accounting.slurmdbd_port),
                30,
                f"slurmdbd did not start; see {daemon.log}",
            )
            self.log("slurmdbd: started")

    def _site(self, site: str) -> None:
        paths = run_paths(self.profile, site)
        for key in ("state", "spool", "log", "tmp"):
            paths[key].mkdir(parents=True, exist_ok=True)
        for node in self.config.site(site).node_names:
            (paths["tmp"] / node).mkdir(exist_ok=True)
            (paths["spool"] / node).mkdir(exist_ok=True)
        self._fake_gpus(paths["devices"], max(g.gpus_per_node for g in self.config.site(site).node_groups))
        changed = write_atomic(paths["conf"], render_slurm_conf(self.config, site))
        changed |= write_atomic(paths["gres"], render_gres_conf(self.config, site))
        env = {"SLURM_CONF": str(paths["conf"])}
        cluster = self.config.site(site).slurm.cluster_name
        if cluster not in _registered_clusters(env):
            run_command(["sacctmgr", "-i", "add", "cluster", cluster], env=env)
        site_daemons = [d for d in self.daemons() if d.site == site]
        if changed:
            # A changed config needs fresh daemons: slurmd refuses a controller whose config differs.
            processes.stop([d.pid for d in site_daemons if d.pid])
        for daemon in site_daemons:
            if daemon.pid:
                continue
            if daemon.name == "slurmctld":
                run_command(["slurmctld"], env=env)
            else:
                run_command(["slurmd", "-N", str(daemon.node)], env=env)
        self.log(f"{site}: slurmctld and {len(site_daemons) - 1} slurmd running ({paths['conf']})")

    @staticmethod
    def _fake_gpus(directory: Path, count: int) -> None:
        # Typed GRES need File= devices; /dev/null's numbers (1,3) make a harmless stand-in.
        directory.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            device = directory / f"nvidia{index}"
            if not device.exists():
                os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))

    def _wait_ready(self, site: str, deadline: float) -> None:
        target = SlurmTarget.for_site(self.config.site(site))
        cluster = self.config.site(site).slurm.cluster_name
        resumed: set[str] = set()
        while True:
            states = _node_states(target)
            bad = {n: s for n, s in states.items() if s not in READY_STATES}
            for node, state in bad.items():
                if state.startswith(("down", "drain")) and not state.endswith("*") and node not in resumed:
                    target.scontrol("update", f"NodeName={node}", "State=RESUME")
                    resumed.add(node)
            registered = _registered_clusters(target.env).get(cluster, "0") not in ("", "0")
            if states and not bad and registered:
                self.log(f"{site}: {len(states)} nodes ready, registered with slurmdbd")
                return
            if time.monotonic() > deadline:
                raise DevClusterError(
                    f"{site}: not ready in time (nodes not ready: {bad or 'none'}, "
                    f"registered with slurmdbd: {registered}); "
                    f"see logs in {run_paths(self.profile, site)['log']}"
                )
            time.sleep(0.5)

    # ---- down ----------------------------------------------------------------------------
    def down(self, purge: bool = False) -> int:
        """Stop every daemon and job step of the local clusters; returns how many processes ended."""
        daemons = self.daemons()
        order = ["slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged"]
        stopped = 0
        for name in order:
            pids = [d.pid for d in daemons if d.name == name and d.pid]
            processes.stop([p for p in pids if p])
            stopped += len(pids)
        strays = processes.processes_of(self.root)
        processes.stop(strays, timeout=5)
        stopped += len(strays)
        if purge and self.root.exists():
            shutil.rmtree(self.root)
        return stopped

    # ---- status --------------------------------------------------------------------------
    def status(self) -> list[dict[str, object]]:
        return [
            {"daemon": d.name, "site": d.where, "pid": d.pid, "running": d.pid is not None, "log": str(d.log)}
            for d in self.daemons()
        ]

    def _daemon(self, name: str) -> Daemon:
        return next(d for d in self.daemons() if d.name == name)

    @staticmethod
    def _wait(check: Callable[[], bool], seconds: float, failure: str) -> None:
        deadline = time.monotonic() + seconds
        while not check():
            if time.monotonic() > deadline:
                raise DevClusterError(failure)
            time.sleep(0.2)


def _succeeds(args: list[str]) -> bool:
    return run_command(args, check=False, timeout=10).returncode == 0


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _registered_clusters(env: dict[str, str]) -> dict[str, str]:
    """Cluster name -> control port, as slurmdbd knows them ('0' until the slurmctld registers)."""
    out = run_command(
        ["sacctmgr", "-n", "-P", "show", "cluster", "format=cluster,controlport"], env=env
    ).stdout
    return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)


def _node_states(target: SlurmTarget) -> dict[str, str]:
    out = target.sinfo("-h", "-N", "-o", "%N|%T")
    return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
