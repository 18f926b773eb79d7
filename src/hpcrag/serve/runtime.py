"""The command line that starts vLLM's OpenAI server in a site's environment.

A Python interpreter runs `python -m vllm.entrypoints.openai.api_server` (the module, because some
vLLM builds ship a broken `vllm` console script); environment modules are loaded first in a login-less
bash; a container image runs the same module under Apptainer/Singularity with the GPUs bound in.
Every server loads hpcrag's key middleware (`vllm_side/`, put on vLLM's PYTHONPATH and bound into a
container), which refuses any request without the server's per-job key but /health and /metrics.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from hpcrag.config import Config
from hpcrag.config.schema import VllmRuntime
from hpcrag.errors import HpcragError
from hpcrag.util.tls import server_context

VLLM_MODULE = "vllm.entrypoints.openai.api_server"
VLLM_SIDE = Path(__file__).resolve().parent / "vllm_side"
AUTH_MIDDLEWARE = "hpcrag_vllm_auth.RequireKey"


class VllmEnvironmentError(HpcragError):
    """The site names no vLLM environment, or the one it names does not exist."""


def runtime_of(config: Config, site: str) -> VllmRuntime:
    runtime = config.site(site).vllm
    if runtime is None:
        raise VllmEnvironmentError(
            f"site {site} has no vLLM environment: add a 'vllm:' block (python, modules or container) "
            f"to {config.root / 'sites' / (site + '.yaml')}"
        )
    return runtime


def check_runtime(config: Config, site: str) -> VllmRuntime:
    """Refuse an environment that cannot work, before anything is submitted.

    Only what a login node can see is checked: an interpreter given as a path must exist and run; a
    bare command name (found through modules on the compute node) or a registry image cannot be seen;
    a certificate and key for HTTPS must load and belong together.
    """
    runtime = runtime_of(config, site)
    if runtime.python is not None and ("/" in runtime.python) and not runtime.modules:
        python = config.resolve_path(runtime.python)
        if not os.access(python, os.X_OK):
            raise VllmEnvironmentError(
                f"site {site}: the vLLM interpreter {python} does not exist or is not executable; "
                "create it (scripts/setup makes .venv-vllm for the dev profile) or fix vllm.python"
            )
    if runtime.container is not None and "://" not in runtime.container.image:
        image = config.resolve_path(runtime.container.image)
        if not image.exists():
            raise VllmEnvironmentError(f"site {site}: the vLLM container image {image} does not exist")
    if runtime.tls is not None:
        tls = runtime.tls
        try:
            server_context(config.resolve_path(tls.certfile), config.resolve_path(tls.keyfile))
        except HpcragError as exc:
            raise VllmEnvironmentError(f"site {site}, vllm.tls: {exc}") from None
    return runtime


def command(config: Config, runtime: VllmRuntime, vllm_args: list[str]) -> list[str]:
    """argv that starts the server with `vllm_args` and the key middleware."""
    vllm_args = [*vllm_args, "--middleware", AUTH_MIDDLEWARE]
    if runtime.container is not None:
        image = runtime.container.image
        if "://" not in image:
            image = str(config.resolve_path(image))
        gpu_flag = ["--nv"] if runtime.device == "cuda" else []
        bind = ["--bind", f"{VLLM_SIDE}:{VLLM_SIDE}:ro"]
        engine = runtime.container.engine
        return [engine, "exec", *gpu_flag, *bind, image, "python3", "-m", VLLM_MODULE, *vllm_args]
    assert runtime.python is not None
    python = str(config.resolve_path(runtime.python)) if "/" in runtime.python else runtime.python
    argv = [python, "-m", VLLM_MODULE, *vllm_args]
    if not runtime.modules:
        return argv
    loads = " && ".join(f"module load {shlex.quote(m)}" for m in runtime.modules)
    return ["bash", "-c", f"{loads} && exec {shlex.join(argv)}"]


def model_location(config: Config, runtime: VllmRuntime, model: str) -> str:
    """What vLLM's --model gets: a mapped path, `<model_root>/<name>` when it exists, else the hub id."""
    if model in runtime.model_paths:
        return str(config.resolve_path(runtime.model_paths[model]))
    if runtime.model_root is not None:
        candidate = Path(config.resolve_path(runtime.model_root)) / model
        if candidate.exists():
            return str(candidate)
    return config.model(model).hf_id
