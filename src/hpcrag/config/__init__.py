"""Typed site configuration: sites, partitions, GPU types, clouds and deployment profiles.

`load_config()` reads `site-configs/` once, applies a profile and returns a validated `Config`;
every problem is a `ConfigError` naming the file, the key path and what is wrong.
"""

from hpcrag.config.errors import ConfigError
from hpcrag.config.loader import config_dir, load_config
from hpcrag.config.schema import (
    Config,
    DevSiteSettings,
    NodeGroup,
    Partition,
    Profile,
    Site,
    SlurmAccess,
)

__all__ = [
    "Config",
    "ConfigError",
    "DevSiteSettings",
    "NodeGroup",
    "Partition",
    "Profile",
    "Site",
    "SlurmAccess",
    "config_dir",
    "load_config",
]
