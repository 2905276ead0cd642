"""Commands that show what is installed: ``plugins``, ``list``, ``groups``."""

from __future__ import annotations

import json
import textwrap

import click

from tlplug.cli.group import cli, current_host
from tlplug.errors import TlplugError
from tlplug.plugins.options import parse_assignments


@cli.command()
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON: per plugin its name, distribution, version, status, error, the names "
    "it registers by kind and the lifecycle hooks it implements.",
)
def plugins(as_json) -> None:
    """List plugins, what they register and the hooks they use.

    For each plugin: its distribution, version and status (with the error of one that did
    not load), the names it registers by kind and the lifecycle hooks it implements."""
    infos = current_host().all_infos()
    if as_json:
        click.echo(json.dumps([i.to_json() for i in infos], indent=2))
        return
    for info in infos:
        version = f" {info.version}" if info.version else ""
        click.echo(f"{info.name} ({info.distribution}{version}) {info.status}")
        if info.error:
            click.echo(f"    error: {info.error}")
        for kind, names in info.registers.items():
            click.echo(f"    {kind}: {', '.join(names)}")
        if info.hooks:
            click.echo(f"    hooks: {', '.join(info.hooks)}")


@cli.command()
@click.argument("backbone")
@click.option("--backbone-opt", multiple=True, metavar="KEY=VALUE", help="Provider option.")
@click.option("--img-size", type=int, help="Input size, for architectures that need one.")
@click.option("--max-groups", type=int, help="Merge the groups into at most this many.")
@click.option("--verbose", "-v", is_flag=True, help="Also list the modules each group is made of.")
def groups(backbone, backbone_opt, img_size, max_groups, verbose) -> None:
    """Show the layer groups of a backbone and their sizes.

    BACKBONE is PROVIDER:NAME; groups are listed stem to top with their parameter counts,
    and with --verbose the modules (paths in the provider's own model) each one holds."""
    from tlplug.engine import Engine
    from tlplug.model.backbone import module_paths
    from tlplug.model.transfer import count_params
    from tlplug.plugins.resolve import build_backbone

    host = current_host()
    engine = Engine(
        host,
        host.recipe_type.from_kwargs(
            backbone=backbone,
            backbone_opts=parse_assignments(backbone_opt, "--backbone-opt"),
            pretrained=False,
            img_size=img_size,
            max_groups=max_groups,
        ),
    )
    built, _ = build_backbone(engine.parts["backbones"], engine.recipe)
    params = dict(built.module.named_parameters())
    modules = module_paths([group.params for group in built.groups])
    for group, paths in zip(built.groups, modules, strict=True):
        count = count_params([params[name] for name in group.params])
        click.echo(f"{group.name:<32} {count:>12,}")
        if verbose:
            click.echo(
                textwrap.fill(", ".join(paths), 96, initial_indent="    ", subsequent_indent="    ")
            )
    click.echo(f"{'head':<32} {'(--head)':>12}")


@cli.command(name="list")
@click.argument("kind")
@click.argument("pattern", required=False)
def list_(kind, pattern) -> None:
    """List the registered names of a kind of strategy, with their options.

    PATTERN is shell-style, as in 'timm:*convnext*'; backbones are listed by provider,
    each provider's options (--backbone-opt) first."""
    host = current_host()
    if kind not in host.kinds:
        raise click.BadParameter(
            f"'{kind}' is not one of {', '.join(host.kinds)}", param_hint="'KIND'"
        )
    registry = host.registry(kind)
    if kind != "backbones":
        for strategy in registry.strategies(pattern):
            options = ", ".join(o.describe() for o in strategy.options.values())
            click.echo(f"{strategy.name:<16} {strategy.description.replace('``', '')}")
            if options:
                click.echo(f"{'':<16}   options: {options}")
        return
    from tlplug.plugins.resolve import matching_backbones

    shown = None
    for strategy, model in matching_backbones(registry, pattern):
        if strategy is not shown and strategy.options:
            options = ", ".join(o.describe() for o in strategy.options.values())
            # stderr: stdout stays one model a line, for scripts
            click.echo(f"{strategy.name}: provider options (--backbone-opt): {options}", err=True)
        shown = strategy
        click.echo(f"{strategy.name}:{model:<40} {strategy.factory.describe(model)}")
    if shown is None:
        raise TlplugError(
            f"no backbone matches '{pattern}'; try a wider pattern such as 'timm:*net*'"
        )
