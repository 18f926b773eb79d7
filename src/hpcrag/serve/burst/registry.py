"""Burst adapters by name: a provider in clouds.yaml names its adapter under `burst.adapter`."""

from __future__ import annotations

from hpcrag.config import Config
from hpcrag.config.schema import UnknownNameError
from hpcrag.errors import HpcragError
from hpcrag.serve.burst.base import BurstAdapter


def adapters() -> dict[str, type[BurstAdapter]]:
    # Imported here so that each adapter's cloud library loads only when it is used.
    from hpcrag.serve.burst.aws import AwsAdapter
    from hpcrag.serve.burst.kubernetes import KubernetesAdapter
    from hpcrag.serve.burst.skypilot import SkyPilotAdapter

    return {cls.kind: cls for cls in (AwsAdapter, KubernetesAdapter, SkyPilotAdapter)}


def adapter_for(config: Config, provider: str) -> BurstAdapter:
    providers = config.clouds.providers
    if provider not in providers:
        raise UnknownNameError("provider", provider, sorted(providers))
    settings = providers[provider].burst
    if settings is None:
        raise HpcragError(
            f"provider {provider} has no burst adapter; add 'burst: {{adapter: ...}}' in clouds.yaml"
        )
    known = adapters()
    if settings.adapter not in known:
        raise UnknownNameError("burst adapter", settings.adapter, sorted(known))
    return known[settings.adapter](config, provider)
