"""``modelsync state ...``: click wiring of the state commands (see :mod:`modelsync.cli`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from modelsync import output
from modelsync.cli import (
    _HELP,
    _OUTPUT,
    _TARGET,
    Decorator,
    _flag,
    _lock_timeout,
    _settings,
)

_SKIP: Decorator = _flag("--skip-schema-creation", _HELP["skip_schema_creation"])


@click.group()
def state() -> None:
    """Inspect or edit the state: what modelsync has submitted.

    \b
    Examples:
      modelsync state list manifests/prod.yaml
      modelsync state show majicmix-realistic manifests/prod.yaml
      modelsync state rm old-model manifests/prod.yaml
      modelsync state adopt hand-loaded-model manifests/prod.yaml
      modelsync state migrate manifests/prod.yaml --to postgresql://modelsync@db/ops
    """


@state.command("list")
@click.argument("manifest", type=click.Path())
@_TARGET
@_OUTPUT
def state_list(manifest: str, output_format: str, **options: Any) -> int:
    """List the models in the state, with their status. Read-only.

    \b
    Example:
      modelsync state list manifests/prod.yaml
    """
    from modelsync.commands import state as commands

    current = commands.read(_settings(manifest, options))
    if output_format == "json":
        click.echo(output.dump_json(commands.describe(current)))
    else:
        click.echo(output.render_state_list(current))
    return 0


@state.command("show")
@click.argument("model_id")
@click.argument("manifest", type=click.Path())
@_TARGET
def state_show(model_id: str, manifest: str, **options: Any) -> int:
    """Show one model's record (JSON), as the state holds it. Read-only.

    \b
    Example:
      modelsync state show majicmix-realistic manifests/prod.yaml
    """
    from modelsync.commands import state as commands

    record = commands.show(_settings(manifest, options), model_id)
    click.echo(output.dump_json({model_id: record.to_json()}))
    return 0


def _state_edit(name: str, done: str, doc: str) -> None:
    """``state rm`` and ``state adopt``: the same options, one call, one line of output."""

    @state.command(name, help=doc)
    @click.argument("model_ids", nargs=-1, required=True, metavar="ID...")
    @click.argument("manifest", type=click.Path())
    @_TARGET
    @_lock_timeout("Wait this long for another run's state lock.")
    @_SKIP
    def edit(model_ids: Sequence[str], manifest: str, **options: Any) -> int:
        from modelsync.commands import state as commands

        changed = getattr(commands, name)(_settings(manifest, options), model_ids)
        click.echo(f"{done}: {', '.join(changed)}")
        return 0


_state_edit(
    "rm",
    "Removed from the state",
    """Drop models from the state. Nothing is deleted on the account.

    The next apply creates them again if they are still in the manifest.

    \b
    Example:
      modelsync state rm old-model other-model manifests/prod.yaml
    """,
)
_state_edit(
    "adopt",
    "Adopted into the state",
    """Record models that already exist on the account as submitted, sending nothing.

    For models loaded by hand before modelsync: add them to the manifest as they are
    on the account, then adopt them so apply does not load them again.

    \b
    Example:
      modelsync state adopt majicmix-realistic manifests/prod.yaml
    """,
)


@state.command("migrate")
@click.argument("manifest", type=click.Path())
@click.option("--to", "to", required=True, metavar="URL_OR_PATH", help=_HELP["migrate_to"])
@_TARGET
@_lock_timeout("Wait this long for another run's state lock.")
@_SKIP
def state_migrate(manifest: str, to: str, **options: Any) -> int:
    """Copy the state to another backend (a file path or a postgresql:// URL), keeping its
    lineage, serial and records.

    The source is locked during the copy and left as it is; the target must be empty.

    \b
    Example:
      modelsync state migrate manifests/prod.yaml --to postgresql://modelsync@db/ops
    """
    from modelsync.commands import state as commands

    done = commands.migrate(_settings(manifest, options), to)
    click.echo(
        f"Copied state {done.source} to {done.target}: {output.plural(done.models, 'model')}, "
        f"serial {done.serial}, lineage {done.lineage}."
    )
    return 0


@state.command("unlock")
@click.argument("manifest", type=click.Path())
@click.option("--epoch", type=click.IntRange(0), required=True, help=_HELP["epoch"])
@_TARGET
def state_unlock(manifest: str, epoch: int, **options: Any) -> int:
    """Break the lease of a PostgreSQL state whose holder is gone for good.

    Only the lease at --epoch (the number in the 'locked' error) is broken, and the epoch
    moves on, so that holder can write nothing if it comes back. A file state's lock dies
    with its process.

    \b
    Example:
      modelsync state unlock manifests/prod.yaml --epoch 17
    """
    from modelsync.commands import state as commands

    done = commands.unlock(_settings(manifest, options), epoch)
    click.echo(
        f"Broke the lease at epoch {done.epoch} of state {done.location} (held by "
        f"{done.holder}); the state is free at epoch {done.new_epoch}."
    )
    return 0


@state.command("ddl")
@click.argument("manifest", type=click.Path())
@_TARGET
def state_ddl(manifest: str, **options: Any) -> int:
    """Print the SQL that creates a PostgreSQL state's tables, for a DBA to run.

    Connects to nothing; then run modelsync with --skip-schema-creation.

    \b
    Example:
      modelsync state ddl manifests/prod.yaml --state postgresql://db/ops
    """
    from modelsync.commands import state as commands

    click.echo(commands.ddl(_settings(manifest, options)), nl=False)
    return 0
