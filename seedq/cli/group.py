"""The ``seedq`` command group: logging levels, global options, one-line errors, help.

- ``-v``/``-q`` work before the subcommand and after it (``seedq worker -v``); workers log
  one INFO line per job by default, the other commands warnings only.
- ``--database-url`` and ``--redis-url`` before the subcommand override ``SEEDQ_*_URL`` for
  every command (see :func:`global_overrides`).
- Environment errors become one line and exit code 2 (:mod:`seedq.cli.errors`).
- The command list in ``seedq --help`` shows each command's whole first sentence.
"""

from __future__ import annotations

import logging
from typing import Any

import click

from seedq.cli.errors import as_config_error

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVEL_KEY = "seedq.log_level"
OVERRIDES_KEY = "seedq.overrides"
BASE_KEY = "seedq.log_base"
VERBOSE_BY_DEFAULT = ("worker",)  # commands whose default level is INFO (job lines)
# INFO chatter kept out of a worker's one line per job unless -v asks for more
CHATTY = ("alembic", "seedq.service.worker.rq", "seedq.reasoning.runner")


def set_log_level(level: int, base: int = logging.WARNING) -> None:
    """Set the root level (installing a stderr handler once, when there is none); the
    ``CHATTY`` loggers say only warnings unless ``level`` is below the command's ``base``."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format=LOG_FORMAT)
    root.setLevel(max(logging.DEBUG, min(level, logging.CRITICAL)))
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.NOTSET if level < base else logging.WARNING)


def start_logging(ctx: click.Context, verbose: int, quiet: int) -> None:
    """The group's share: the default level of the subcommand, moved by the group's -v/-q."""
    base = logging.INFO if ctx.invoked_subcommand in VERBOSE_BY_DEFAULT else logging.WARNING
    level = base - 10 * verbose + 10 * quiet
    ctx.meta[LEVEL_KEY], ctx.meta[BASE_KEY] = level, base
    set_log_level(level, base)


def _shift(ctx: click.Context, param: click.Parameter, value: int) -> None:
    """A subcommand's -v/-q: move the level the group set."""
    if not value:
        return
    step = -10 if param.name == "seedq_verbose" else 10
    level = int(ctx.meta.get(LEVEL_KEY, logging.WARNING)) + step * value
    ctx.meta[LEVEL_KEY] = level
    set_log_level(level, int(ctx.meta.get(BASE_KEY, logging.WARNING)))


def verbosity_params() -> list[click.Option]:
    return [
        click.Option(["-v", "--verbose", "seedq_verbose"], count=True, expose_value=False,
                     callback=_shift, help="More logging (repeat for debug)."),
        click.Option(["-q", "--quiet", "seedq_quiet"], count=True, expose_value=False,
                     callback=_shift, help="Less logging."),
    ]


def add_verbosity(command: click.Command) -> None:
    """Give ``command`` (and, for a group, its subcommands) ``-v``/``-q`` unless it has them."""
    taken = {opt for p in command.params for opt in getattr(p, "opts", ())}
    if not taken & {"-v", "-q", "--verbose", "--quiet"}:
        command.params.extend(verbosity_params())
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            add_verbosity(sub)


def global_overrides() -> dict[str, Any]:
    """The Settings fields given as global options (``--database-url``, ``--redis-url``)."""
    ctx = click.get_current_context(silent=True)
    given = ctx.meta.get(OVERRIDES_KEY, {}) if ctx is not None else {}
    return {k: v for k, v in given.items() if v is not None}


class SeedqGroup(click.Group):
    """See the module docstring."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        add_verbosity(cmd)
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.Exit:
            raise
        except Exception as exc:
            error = as_config_error(exc)
            if error is None:
                raise
            raise error from exc

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=200)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
