"""The real site-configs load with the PRD's values; every kind of mistake names file, key and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcrag.config import ConfigError, load_config
from hpcrag.config.schema import UnknownNameError
from hpcrag.errors import HpcragError
from tests.conftest import CONFIG_DIR


def test_sites_follow_the_prd_rack_and_partitions() -> None:
    config = load_config(CONFIG_DIR, "production")
    assert sorted(config.sites) == ["nyc", "sf"]
    for site in config.sites.values():
        groups = {g.nodes: (g.gpu_type, g.gpus_per_node, g.cpus, g.memory_mb) for g in site.node_groups}
        assert groups == {
            "node[1-4]": ("h100", 8, 128, 2048000),
            "node[5-6]": ("a100", 8, 128, 2048000),
            "node[7-8]": ("l40s", 8, 64, 512000),
        }
        parts = {p.name: (p.nodes, p.default, p.max_time) for p in site.partitions}
        assert parts == {
            "tier-s": ("node[7-8]", False, "4:00:00"),
            "tier-m": ("node[5-8]", True, "8:00:00"),
            "tier-l": ("node[1-4]", False, "24:00:00"),
            "tier-xl": ("node[1-4]", False, "72:00:00"),
        }
        assert site.partition_gpu_types("tier-m") == ["a100", "l40s"]
        assert site.slurm.access.clusters == site.name


def test_clouds_carry_prd_prices_and_compliance() -> None:
    clouds = load_config(CONFIG_DIR, "production").clouds
    assert set(clouds.providers) == {
        "aws",
        "gcp",
        "azure",
        "coreweave",
        "lambda",
        "runpod",
        "modal",
        "replicate",
    }
    assert clouds.providers["coreweave"].gpus["h100"].usd_per_gpu_hour == 2.23
    assert clouds.providers["runpod"].gpus["rtx4090"].usd_per_gpu_hour == 0.44
    assert clouds.providers["aws"].gpus["a100"].usd_per_gpu_hour == 2.50
    assert clouds.tiers["hyperscaler"].compliance["hipaa"] == "full"
    assert "hipaa" not in clouds.tiers["serverless"].compliance


def test_dev_profile_maps_sites_onto_local_slurm_confs() -> None:
    config = load_config(CONFIG_DIR, "dev")
    access = config.site("sf").slurm.access
    assert access.clusters is None
    assert access.slurm_conf == "/var/tmp/hpcrag-dev/sf/slurm.conf"
    assert config.dev_settings("nyc").first_job_id != config.dev_settings("sf").first_job_id


def test_unknown_site_and_partition_list_the_valid_ones() -> None:
    config = load_config(CONFIG_DIR, "dev")
    with pytest.raises(UnknownNameError, match=r"unknown site 'tokyo'; valid sites: nyc, sf"):
        config.site("tokyo")
    with pytest.raises(UnknownNameError, match=r"valid partitions: tier-s, tier-m, tier-l, tier-xl"):
        config.site("nyc").partition("gpu")


def _error(root: Path, profile: str = "dev") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(root, profile)
    return info.value


def test_malformed_yaml_names_file_and_line(config_copy: Path) -> None:
    site = config_copy / "sites" / "nyc.yaml"
    site.write_text(site.read_text().replace("rack: rack-1", "rack: [rack-1"))
    err = _error(config_copy)
    assert err.file == str(site)
    assert "malformed YAML at line" in err.problem


def test_unknown_key_lists_valid_keys(config_copy: Path) -> None:
    site = config_copy / "sites" / "sf.yaml"
    site.write_text(site.read_text().replace("rack: rack-2", "rack: rack-2\nrakc: oops"))
    err = _error(config_copy)
    assert err.file == str(site)
    assert err.key_path == "rakc"
    assert "unknown key 'rakc'" in err.problem and "valid keys here: name, display_name" in err.problem


def test_wrong_type_names_the_nested_key(config_copy: Path) -> None:
    site = config_copy / "sites" / "sf.yaml"
    site.write_text(site.read_text().replace("gpus_per_node: 8, cpus: 64", "gpus_per_node: eight, cpus: 64"))
    err = _error(config_copy)
    assert err.key_path == "node_groups[2].gpus_per_node"
    assert "'eight'" in err.problem


def test_bad_max_time_is_explained(config_copy: Path) -> None:
    site = config_copy / "sites" / "nyc.yaml"
    site.write_text(site.read_text().replace('max_time: "4:00:00"', 'max_time: "4 hours"'))
    err = _error(config_copy)
    assert err.key_path == "partitions[0].max_time"
    assert "HH:MM:SS" in err.problem


def test_profile_naming_a_missing_site(config_copy: Path) -> None:
    profile = config_copy / "profiles" / "dev.yaml"
    profile.write_text(
        profile.read_text().replace(
            "sites:\n",
            "sites:\n  tokyo: {slurmctld_port: 18817, slurmd_port_base: 18000, first_job_id: 900000}\n",
        )
    )
    err = _error(config_copy)
    assert err.file == str(profile)
    assert err.key_path == "sites.tokyo"
    assert "unknown site 'tokyo'; sites: nyc, sf" in err.problem


def test_unknown_gpu_type_in_a_site(config_copy: Path) -> None:
    site = config_copy / "sites" / "nyc.yaml"
    site.write_text(site.read_text().replace("gpu_type: a100", "gpu_type: a1000"))
    err = _error(config_copy)
    assert err.key_path == "node_groups[1].gpu_type"
    assert "unknown GPU type 'a1000'" in err.problem


def test_partition_on_undeclared_nodes(config_copy: Path) -> None:
    site = config_copy / "sites" / "nyc.yaml"
    site.write_text(
        site.read_text().replace('name: tier-s,  nodes: "node[7-8]"', 'name: tier-s,  nodes: "node[7-9]"')
    )
    assert "names nodes no node group declares: node9" in _error(config_copy).problem


def test_overlapping_job_id_ranges_are_refused(config_copy: Path) -> None:
    profile = config_copy / "profiles" / "dev.yaml"
    profile.write_text(profile.read_text().replace("first_job_id: 200000", "first_job_id: 100500"))
    err = _error(config_copy)
    assert "must be at least 100000 apart" in err.problem


def test_unknown_profile_and_missing_directory(tmp_path: Path, config_copy: Path) -> None:
    assert "no such profile 'staging'; profiles: dev, production" in _error(config_copy, "staging").problem
    with pytest.raises(HpcragError, match="set HPCRAG_CONFIG_DIR"):
        load_config(tmp_path / "nowhere", "dev")


def test_gateway_settings_are_checked(config_copy: Path) -> None:
    gateway = config_copy / "gateway.yaml"
    text = gateway.read_text()
    gateway.write_text(text.replace("{s: 0.3, m: 0.5, l: 0.7, xl: 1.0}", "{s: 0.6, m: 0.5, l: 0.7, xl: 1.0}"))
    err = _error(config_copy)
    assert err.file == str(gateway)
    assert "complexity_thresholds must rise from tier s to tier xl, got [0.6, 0.5, 0.7, 1.0]" in err.problem
    gateway.write_text(text.replace("default_user_tier: pro", "default_user_tier: gold"))
    assert (
        "default_user_tier 'gold' is not one of user_tiers: free, pro, enterprise"
        in _error(config_copy).problem
    )
    gateway.write_text(text.replace("attempts: 3 ", "attempts: 0 "))
    assert _error(config_copy).key_path == "attempts"
