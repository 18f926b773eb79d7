"""`hpcrag sites`: list, show and validate the site configuration; render its Slurm configs."""

from __future__ import annotations

from pathlib import Path

import click

from hpcrag.cli.common import echo_json, json_option, load, table


@click.group()
def sites() -> None:
    """Sites, their partitions and GPUs, as declared in site-configs/."""


@sites.command("list")
@json_option
@click.pass_context
def list_sites(ctx: click.Context, as_json: bool) -> None:
    """One line per site: its cluster, how it is reached, GPUs by type, partitions."""
    config = load(ctx)
    rows = []
    for site in config.sites.values():
        gpus: dict[str, int] = {}
        for group in site.node_groups:
            gpus[group.gpu_type] = gpus.get(group.gpu_type, 0) + group.gpus_per_node * len(group.node_names)
        access = site.slurm.access
        rows.append(
            {
                "site": site.name,
                "display_name": site.display_name,
                "cluster": site.slurm.cluster_name,
                "access": f"SLURM_CONF={access.slurm_conf}"
                if access.slurm_conf
                else f"--clusters={access.clusters}",
                "nodes": len(site.node_names),
                "gpus": gpus,
                "partitions": [p.name for p in site.partitions],
            }
        )
    if as_json:
        echo_json({"profile": config.profile.name, "sites": rows})
        return
    table(
        f"Sites (profile {config.profile.name})",
        ["site", "name", "cluster", "reached through", "nodes", "GPUs", "partitions"],
        [
            [
                r["site"],
                r["display_name"],
                r["cluster"],
                r["access"],
                r["nodes"],
                ", ".join(f"{n}x{t}" for t, n in r["gpus"].items()),
                ", ".join(r["partitions"]),
            ]
            for r in rows
        ],
    )


@sites.command()
@click.argument("site")
@json_option
@click.pass_context
def show(ctx: click.Context, site: str, as_json: bool) -> None:
    """Everything declared for SITE: node groups, partitions, prices, compliance."""
    config = load(ctx)
    data = config.site(site)
    if as_json:
        echo_json(data.model_dump(mode="json"))
        return
    click.echo(f"{data.display_name} ({data.name}), {data.location}, {data.rack}")
    click.echo(
        f"Slurm cluster {data.slurm.cluster_name}, "
        f"reached through {data.slurm.access.model_dump(exclude_none=True)}"
    )
    table(
        "Node groups",
        ["nodes", "GPUs", "CPUs", "memory (MB)", "$/GPU-hour"],
        [
            [
                g.nodes,
                f"{g.gpus_per_node}x{g.gpu_type}",
                g.cpus,
                g.memory_mb,
                f"{data.gpu_price_usd_per_hour[g.gpu_type]:.2f}",
            ]
            for g in data.node_groups
        ],
    )
    table(
        "Partitions",
        ["partition", "nodes", "GPU types", "default", "max time", "state"],
        [
            [
                p.name,
                p.nodes,
                ", ".join(data.partition_gpu_types(p.name)),
                "yes" if p.default else "",
                p.max_time,
                p.state,
            ]
            for p in data.partitions
        ],
    )
    click.echo(f"Compliance: {', '.join(data.compliance) or '(none)'}")


@sites.command()
@click.pass_context
def validate(ctx: click.Context) -> None:
    """Check every file and every profile; print a summary or the first problem found."""
    from hpcrag.config import config_dir, load_config

    options = ctx.find_root().obj or {}
    root = Path(options.get("config_dir") or config_dir())
    profiles = sorted(p.stem for p in (root / "profiles").glob("*.yaml"))
    for name in profiles:
        load_config(root, name)
    config = load(ctx)
    click.echo(
        f"ok: {root} — {len(config.sites)} sites ({', '.join(config.sites)}), "
        f"{len(config.gpus)} GPU types, {len(config.clouds.providers)} cloud providers, "
        f"profiles: {', '.join(profiles)}"
    )


@sites.command("slurm-conf")
@click.argument("site")
@click.option("--gres", is_flag=True, help="Print gres.conf instead of slurm.conf.")
@click.option(
    "-o",
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write slurm.conf and gres.conf into this directory (atomically) instead.",
)
@click.pass_context
def slurm_conf(ctx: click.Context, site: str, gres: bool, output_dir: Path | None) -> None:
    """Render SITE's slurm.conf (or gres.conf) from the YAML, for the active profile."""
    from hpcrag.slurm.conf import render_gres_conf, render_slurm_conf
    from hpcrag.util.files import write_atomic

    config = load(ctx)
    if output_dir is None:
        click.echo(render_gres_conf(config, site) if gres else render_slurm_conf(config, site), nl=False)
        return
    write_atomic(output_dir / "slurm.conf", render_slurm_conf(config, site))
    write_atomic(output_dir / "gres.conf", render_gres_conf(config, site))
    click.echo(f"wrote {output_dir / 'slurm.conf'} and {output_dir / 'gres.conf'}")
