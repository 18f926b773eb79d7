"""Read `site-configs/` into a validated `Config`, blaming the right file and key for every problem.

Layout: `gpus.yaml`, `clouds.yaml`, `sites/<name>.yaml`, `profiles/<name>.yaml`. The active profile
is the `profile` argument, else `$HPCRAG_PROFILE`, else `dev` (the embedded local clusters).
`$HPCRAG_REGISTRY` replaces the serving registry's path (a private registry for a test or a sandbox).
"""

from __future__ import annotations

import itertools
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from hpcrag.config.errors import ConfigError
from hpcrag.config.rag_schema import RagSettings
from hpcrag.config.schema import (
    Clouds,
    Config,
    Gateway,
    GpuCatalog,
    Matrix,
    ModelCatalog,
    Profile,
    Serving,
    Site,
    SiteSlurm,
    SlurmAccess,
    TierCatalog,
)
from hpcrag.paths import repo_root

DEFAULT_PROFILE = "dev"
ON_PREM_LEVEL = "on-prem"
RATINGS = ("recommended", "viable", "marginal", "not-recommended")
M = TypeVar("M", bound=BaseModel)


def config_dir() -> Path:
    """The configuration directory: `$HPCRAG_CONFIG_DIR`, else the repository's `site-configs/`."""
    override = os.environ.get("HPCRAG_CONFIG_DIR")
    if override:
        return Path(override)
    return repo_root() / "site-configs"


def active_profile_name(profile: str | None = None) -> str:
    return profile or os.environ.get("HPCRAG_PROFILE") or DEFAULT_PROFILE


def load_config(root: Path | str | None = None, profile: str | None = None) -> Config:
    """Load and cross-check every file under `root`, then apply the profile to the sites."""
    root = Path(root) if root is not None else config_dir()
    if not root.is_dir():
        raise ConfigError(
            root, "", "configuration directory not found; set HPCRAG_CONFIG_DIR to a site-configs folder"
        )
    gpus = _load(GpuCatalog, root / "gpus.yaml").gpus
    clouds = _load(Clouds, root / "clouds.yaml")
    _check_gpu_names(
        root / "clouds.yaml",
        gpus,
        {f"providers.{p}.gpus.{g}": g for p, prov in clouds.providers.items() for g in prov.gpus},
    )
    sites = _load_sites(root / "sites", gpus)
    profile_name = active_profile_name(profile)
    profile_file = root / "profiles" / f"{profile_name}.yaml"
    if not profile_file.is_file():
        known = sorted(p.stem for p in (root / "profiles").glob("*.yaml"))
        raise ConfigError(
            profile_file, "", f"no such profile {profile_name!r}; profiles: {', '.join(known) or '(none)'}"
        )
    active = _load(Profile, profile_file)
    _check_profile(profile_file, active, sites)
    if active.is_local:
        sites = {name: _local_site(site, active) for name, site in sites.items()}
    if active.vllm is not None:
        sites = {name: site.model_copy(update={"vllm": active.vllm}) for name, site in sites.items()}
    models = _load(ModelCatalog, root / "models.yaml").models
    tiers = _load(TierCatalog, root / "tiers.yaml").tiers
    for tier_name, tier in tiers.items():
        _check_names(root / "tiers.yaml", f"tiers.{tier_name}.models", tier.models, models, "model")
    matrix = _load(Matrix, root / "matrix.yaml")
    _check_matrix(root / "matrix.yaml", matrix, gpus, tiers, clouds)
    serving_data = {**_read_yaml(root / "serving.yaml"), **active.serving}
    if os.environ.get("HPCRAG_REGISTRY"):
        serving_data["registry"] = os.environ["HPCRAG_REGISTRY"]
    serving = _validate(Serving, serving_data, root / "serving.yaml")
    _check_names(
        root / "serving.yaml", "burst.providers", serving.burst.providers, clouds.providers, "provider"
    )
    gateway_data = {**_read_yaml(root / "gateway.yaml"), **active.gateway}
    if os.environ.get("HPCRAG_GATEWAY_DB"):
        gateway_data["database"] = os.environ["HPCRAG_GATEWAY_DB"]
    gateway = _validate(Gateway, gateway_data, root / "gateway.yaml")
    for name, site in sites.items():
        if site.vllm is not None:
            tier_models = site.vllm.tier_models.values()
            _check_names(root / "sites" / f"{name}.yaml", "vllm.tier_models", tier_models, models, "model")
    rag = _load(RagSettings, root / "rag.yaml")
    _check_rag_collections(root / "rag.yaml", rag)
    return Config(
        root=root,
        gpus=gpus,
        sites=sites,
        clouds=clouds,
        profile=active,
        tiers=tiers,
        models=models,
        matrix=matrix,
        serving=serving,
        gateway=gateway,
        rag=rag,
    )


def local_slurm_conf(profile: Profile, site: str) -> Path:
    """Where the local cluster of `site` keeps its generated slurm.conf."""
    assert profile.run_dir is not None
    return Path(profile.run_dir) / site / "slurm.conf"


def _local_site(site: Site, profile: Profile) -> Site:
    if site.name not in profile.sites:
        return site
    access = SlurmAccess(slurm_conf=str(local_slurm_conf(profile, site.name)))
    slurm = SiteSlurm(cluster_name=site.slurm.cluster_name, controller_host="localhost", access=access)
    return site.model_copy(update={"slurm": slurm})


def _load_sites(folder: Path, gpus: dict[str, Any]) -> dict[str, Site]:
    files = sorted(folder.glob("*.yaml"))
    if not files:
        raise ConfigError(folder, "", "no site files (sites/<name>.yaml); add at least one site")
    sites: dict[str, Site] = {}
    clusters: dict[str, str] = {}
    for file in files:
        site = _load(Site, file)
        if site.name != file.stem:
            raise ConfigError(file, "name", f"site name {site.name!r} must match the file name {file.stem!r}")
        if site.slurm.cluster_name in clusters:
            raise ConfigError(
                file,
                "slurm.cluster_name",
                f"cluster name {site.slurm.cluster_name!r} is already used by site "
                f"{clusters[site.slurm.cluster_name]}",
            )
        clusters[site.slurm.cluster_name] = site.name
        _check_gpu_names(
            file,
            gpus,
            {
                **{f"node_groups[{i}].gpu_type": g.gpu_type for i, g in enumerate(site.node_groups)},
                **{f"gpu_price_usd_per_hour.{g}": g for g in site.gpu_price_usd_per_hour},
            },
        )
        unpriced = sorted({g.gpu_type for g in site.node_groups} - set(site.gpu_price_usd_per_hour))
        if unpriced:
            raise ConfigError(
                file,
                "gpu_price_usd_per_hour",
                f"no price for GPU types {', '.join(unpriced)}; add $/GPU-hour",
            )
        sites[site.name] = site
    return sites


def _check_names(file: Path, key_path: str, used: Any, known: dict[str, Any], kind: str) -> None:
    for name in used:
        if name not in known:
            raise ConfigError(file, key_path, f"unknown {kind} {name!r}; known {kind}s: {', '.join(known)}")


def _check_matrix(
    file: Path, matrix: Matrix, gpus: dict[str, Any], tiers: dict[str, Any], clouds: Clouds
) -> None:
    _check_gpu_names(file, gpus, {f"columns[{i}]": g for i, g in enumerate(matrix.columns)})
    levels = [*clouds.tiers, ON_PREM_LEVEL]
    for level in levels:
        if level not in matrix.levels:
            raise ConfigError(file, f"levels.{level}", "infrastructure level has no table; add one")
    for level, table in matrix.levels.items():
        if level not in levels:
            raise ConfigError(file, f"levels.{level}", f"unknown level; levels: {', '.join(levels)}")
        for tier in tiers:
            row = table.get(tier)
            where = f"levels.{level}.{tier}"
            if not isinstance(row, list) or len(row) != len(matrix.columns):
                raise ConfigError(file, where, f"need a list of {len(matrix.columns)} ratings, got {row!r}")
            for index, rating in enumerate(row):
                if rating not in RATINGS:
                    raise ConfigError(
                        file, f"{where}[{index}]", f"unknown rating {rating!r}; ratings: {', '.join(RATINGS)}"
                    )


def _check_gpu_names(file: Path, gpus: dict[str, Any], used: dict[str, str]) -> None:
    for key_path, gpu in used.items():
        if gpu not in gpus:
            raise ConfigError(
                file, key_path, f"unknown GPU type {gpu!r}; GPU types in gpus.yaml: {', '.join(gpus)}"
            )


def _check_profile(file: Path, profile: Profile, sites: dict[str, Site]) -> None:
    if profile.name != file.stem:
        raise ConfigError(
            file, "name", f"profile name {profile.name!r} must match the file name {file.stem!r}"
        )
    ports: dict[int, str] = {}
    if profile.accounting is not None:
        ports[profile.accounting.slurmdbd_port] = "accounting.slurmdbd_port"
        ports[profile.accounting.mariadb_port] = "accounting.mariadb_port"
    ranges: list[tuple[int, str]] = []
    for name, settings in profile.sites.items():
        if name not in sites:
            raise ConfigError(file, f"sites.{name}", f"unknown site {name!r}; sites: {', '.join(sites)}")
        nodes = len(sites[name].node_names)
        wanted = {settings.slurmctld_port: f"sites.{name}.slurmctld_port"}
        wanted.update(
            {
                settings.slurmd_port_base + i: f"sites.{name}.slurmd_port_base (+{i})"
                for i in range(1, nodes + 1)
            }
        )
        for port, key in wanted.items():
            if port in ports:
                raise ConfigError(file, key, f"port {port} is also used by {ports[port]}")
            ports[port] = key
        ranges.append((settings.first_job_id, name))
    ranges.sort()
    # Job ids must not collide across clusters: submitit keys job state by id alone.
    for (low, a), (high, b) in itertools.pairwise(ranges):
        if high - low < 100_000:
            raise ConfigError(
                file,
                f"sites.{b}.first_job_id",
                f"job ids of {a} (from {low}) and {b} (from {high}) must be at least 100000 apart",
            )


def _check_rag_collections(file: Path, rag: RagSettings) -> None:
    """Each collection's overrides, merged over the shared settings, must still validate."""
    from hpcrag.config.rag_schema import CollectionSettings

    for name in rag.collections:
        try:
            rag.for_collection(name)
        except ValidationError as exc:
            key_path, problem = _describe(CollectionSettings, exc.errors()[0])
            raise ConfigError(file, f"collections.{name}.{key_path}", problem) from None


def _load(model: type[M], file: Path) -> M:
    return _validate(model, _read_yaml(file), file)


def _validate(model: type[M], data: Any, file: Path) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(model, err) for err in exc.errors()]
        key_path, first = problems[0]
        more = "".join(f"\n  {k}: {p}" for k, p in problems[1:])
        raise ConfigError(file, key_path, first + more) from None


def _read_yaml(file: Path) -> Any:
    if not file.is_file():
        raise ConfigError(file, "", "file not found")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(file, "", f"malformed YAML{at}: {problem}; fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(file, "", f"expected a mapping at the top level, got {type(data).__name__}")
    return data


def _describe(model: type[BaseModel], error: Any) -> tuple[str, str]:
    loc = tuple(error["loc"])
    key_path = _format_loc(loc)
    if error["type"] == "extra_forbidden":
        valid = _fields_at(model, loc[:-1])
        hint = f"; valid keys here: {', '.join(valid)}" if valid else ""
        return key_path, f"unknown key {loc[-1]!r}{hint}"
    if error["type"] == "missing":
        return key_path, "required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    return key_path, f"{message} (got {error.get('input')!r})"


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or str(part).startswith("function-"):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names of the model found at `loc`, for 'valid keys' hints."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return []
            current = field.annotation
        else:
            args = typing.get_args(current)
            if not args:
                return []
            current = args[-1]
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """Strip Optional[...] so a nested model is found behind it."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(annotation) if a is not type(None)]
        return models[0] if len(models) == 1 else annotation
    return annotation
