"""The ``tlplug`` click group: the built-in commands register on it, and it loads what
plugins add the first time a command is looked up."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import click

from tlplug.cli.flags import kind_options
from tlplug.errors import TlplugError
from tlplug.plugins.kinds import KINDS

if TYPE_CHECKING:
    from tlplug.plugins.host import PluginHost


class TlplugGroup(click.Group):
    """The built-in commands, plus what plugins add once they are loaded: commands
    (``tlplug_register_commands``) and the options of their kinds on the commands that
    choose them (``tlplug run --notify``)."""

    host: PluginHost | None = None

    def list_commands(self, ctx: click.Context) -> list[str]:
        self.load_plugins()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        self.load_plugins()
        return super().get_command(ctx, name)

    def load_plugins(self, host: PluginHost | None = None) -> PluginHost:
        """Load the plugins once (or take ``host``'s) and add what they bring; return them."""
        if self.host is not None:
            return self.host
        from tlplug.plugins.host import PluginHost

        self.host = host = host or PluginHost()
        for key, kind in host.kinds.items():
            for name, command in list(self.commands.items()):
                # A command also takes the kinds of the command its ``kinds_of`` names.
                if key in KINDS or kind.command not in (name, getattr(command, "kinds_of", "")):
                    continue
                command = self.commands[name] = copy.copy(command)
                command.params = [*command.params, *kind_options(kind)]
        for impl in host.hook.tlplug_register_commands.get_hookimpls():
            before = dict(self.commands)
            try:
                impl.function(cli=self)
                taken = [n for n in before if self.commands[n] is not before[n]]
                if taken:
                    raise TlplugError(f"command '{taken[0]}' is taken by another")
            except Exception as exc:  # a broken plugin must not take the command line down
                self.commands = before
                info = host.infos[impl.plugin_name]
                info.status, info.error = "failed", f"{type(exc).__name__}: {exc}"
        return host


def current_host() -> PluginHost:
    """The plugins of the command line running now."""
    return click.get_current_context().find_root().command.load_plugins()


@click.group(cls=TlplugGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tlplug")
def cli() -> None:
    """Fine-tune pretrained image classifiers from pluggable strategies."""
