"""`satchel trust import|show`: the trust root the manager verifies every bundle against."""

from __future__ import annotations

from pathlib import Path

import click

from satchel.manager.commands.common import echo_json, refusals_exit_1
from satchel.manager.commands.context import run_service
from satchel.manager.errors import UsageError
from satchel.manager.services import trust as trust_service


@click.group("trust")
def trust_group() -> None:
    """The trust root the manager verifies every bundle against."""


def _root_documents(path: Path) -> list[bytes]:
    """root.json plus the `N.root.json` history beside it (the rotation chain)."""
    if path.is_dir():
        path = path / "root.json"
    try:
        docs = [path.read_bytes()]
        docs += [p.read_bytes() for p in sorted(path.parent.glob("*.root.json")) if p != path]
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from e
    return docs


@trust_group.command("import")
@click.argument("root_json", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
@refusals_exit_1
def trust_import(ctx: click.Context, root_json: Path, as_json: bool) -> None:
    """Trust ROOT_JSON (KEYDIR/root.json): the first root, or the next rotation of it.

    Earlier versions found beside it (KEYDIR/N.root.json) are imported too, so devices can
    walk the rotation chain.
    """
    docs = _root_documents(root_json)
    result = run_service(ctx, lambda s: trust_service.import_roots(s, docs))
    if as_json:
        echo_json({"version": result.root.version, "added": list(result.added)})
    elif result.added:
        added = ", ".join(str(v) for v in result.added)
        click.echo(f"trust root is now version {result.root.version} (added version {added})")
    else:
        click.echo(f"trust root version {result.root.version} was already imported")


@trust_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
@refusals_exit_1
def trust_show(ctx: click.Context, as_json: bool) -> None:
    """Show the trust root: version, signing keys, thresholds."""
    info = run_service(ctx, trust_service.summary)
    if as_json:
        echo_json(info)
        return
    click.echo(f"trust root version {info['version']} (history: {info['versions']})")
    click.echo(f"signing keys ({info['signing_threshold']} needed):")
    for k in info["signing_keys"]:  # type: ignore[attr-defined]
        click.echo(f"  {k}")
