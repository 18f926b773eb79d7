"""The interface every burst adapter implements, and what a burst asks for.

Each adapter declares the capabilities it lacks with a reason (`unsupported`), so a caller learns
what it cannot do before it tries, not from a crash.
"""

from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from hpcrag.config import Config
from hpcrag.errors import HpcragError
from hpcrag.serve.registry import Endpoint

VLLM_PORT = 8000
CAPABILITIES = ("launch", "terminate", "discover-endpoint", "multi-node", "spot")


class CapabilityError(HpcragError):
    """An adapter was asked for something it declares it cannot do."""


@dataclass(frozen=True)
class BurstRequest:
    """One replica of a tier on a cloud provider's GPUs."""

    provider: str
    tier: str
    model: str
    hf_id: str
    gpu_type: str
    gpus: int
    instance_type: str
    usd_per_hour: float
    vllm_args: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"hpcrag-vllm-{self.tier}"

    def server_command(self) -> str:
        """The shell command that starts vLLM on the instance (vllm-openai images carry it)."""
        args = [
            "python3",
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            self.hf_id,
            "--served-model-name",
            self.model,
            *self.vllm_args,
            "--host",
            "0.0.0.0",
            "--port",
            str(VLLM_PORT),
        ]
        return shlex.join(args)


class BurstAdapter(ABC):
    """Launches and terminates vLLM servers on one provider."""

    kind: ClassVar[str]
    unsupported: ClassVar[dict[str, str]] = {}

    def __init__(self, config: Config, provider: str) -> None:
        self.config = config
        self.provider = provider
        self.settings = config.clouds.providers[provider].burst

    def require(self, capability: str) -> None:
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown capability {capability!r}; capabilities: {', '.join(CAPABILITIES)}")
        if capability in self.unsupported:
            reason = self.unsupported[capability]
            raise CapabilityError(
                f"burst adapter {self.kind} ({self.provider}) cannot {capability}: {reason}"
            )

    @abstractmethod
    def launch(self, request: BurstRequest) -> Endpoint:
        """Start one server; the returned row (state `starting`) is not yet in the registry."""

    @abstractmethod
    def terminate(self, endpoint: Endpoint) -> None:
        """Stop the server behind a registry row."""

    def refresh(self, endpoint: Endpoint) -> dict[str, object]:
        """Registry changes learned from the provider (URL, health); none by default."""
        return {}
