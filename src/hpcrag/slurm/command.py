"""The one helper through which hpcrag runs every external command.

It never uses a shell, always captures output, and turns every failure into an error that carries
the command, exit code, stdout and stderr, so a caller can report it without a traceback.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hpcrag.errors import HpcragError


class CommandError(HpcragError):
    """An external command failed (non-zero exit, missing executable or time-out)."""

    def __init__(
        self, args: Sequence[str], returncode: int | None, stdout: str, stderr: str, why: str
    ) -> None:
        self.args_list = list(args)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        details = f"\n  stderr: {stderr.strip()}" if stderr.strip() else ""
        details += f"\n  stdout: {stdout.strip()[:2000]}" if stdout.strip() else ""
        super().__init__(f"command failed ({why}): {shlex.join(self.args_list)}{details}")


@dataclass(frozen=True)
class CommandResult:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def run_command(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    check: bool = True,
    cwd: str | None = None,
) -> CommandResult:
    """Run `args` (no shell); `env` entries are added to the current environment."""
    args = [str(a) for a in args]
    full_env = {**os.environ, **env} if env else None
    try:
        proc = subprocess.run(
            args, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd, check=False
        )
    except FileNotFoundError:
        raise CommandError(args, None, "", "", f"{args[0]} is not installed or not on PATH") from None
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise CommandError(args, None, out, err, f"timed out after {timeout:g}s") from None
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, proc.stdout, proc.stderr, f"exit code {proc.returncode}")
    return CommandResult(args=args, returncode=proc.returncode, stdout=proc.stdout, stderr=proc.stderr)
