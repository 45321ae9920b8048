"""The operator commands of the CLI: doctor, tail, export, import, erase (registered by ``cli.py``).

Long work shows a Rich progress bar on stderr (stdout may be the export itself)."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import anyio
import typer
from pydantic import ValidationError

from ..errors import SharedMemoryError
from ..event_filter import EventFilter
from ..models import Scope, validate_identifier
from ..settings import Settings

DataDir = Annotated[Path | None, typer.Option(help="embedded backends' data dir [env: MSM_DATA_DIR]")]
Tenant = Annotated[str | None, typer.Option(help="the tenant [env: MSM_TENANT; default 'default']")]
ScopeOption = Annotated[str | None, typer.Option(help="user:<id> or workspace:<id>")]


def _cli() -> ModuleType:
    """The CLI's shared helpers (settings, logging, exit codes), imported when a command runs: ``cli.py``
    imports this module to register the commands."""
    from .. import cli

    return cli


def _scope(text: str | None, option: str = "--scope") -> Scope | None:
    if text is None:
        return None
    try:
        return Scope.parse(text)
    except SharedMemoryError as exc:
        _cli().fail(f"{option}: {exc.message}")
        raise  # unreachable: fail exits


def _tenant(settings: Settings, tenant: str | None) -> str:
    chosen = tenant or settings.tenant
    try:
        return validate_identifier(chosen, "tenant")
    except SharedMemoryError as exc:
        _cli().fail(f"--tenant: {exc.message}")
        raise


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Any]:
    """A Rich progress bar on stderr; yields ``advance(n, total=None)`` (``total`` once it is known)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n, total=None: progress.update(task, advance=n, total=total)


@asynccontextmanager
async def connections_for(settings: Settings) -> AsyncIterator[Any]:
    from ..runtime import open_connections

    async with open_connections(settings) as connections:
        yield connections


def register(app: typer.Typer) -> None:
    app.command()(doctor)
    app.command()(tail)
    app.command("export")(export)
    app.command("import")(import_)
    app.command()(erase)


def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False, data_dir: DataDir = None
) -> None:
    """Check this installation: configuration, PostgreSQL and pgvector, Redis, Qdrant, the embedding model,
    backlogs and migrations. Exit code 0 when healthy, 1 when not."""
    from rich.console import Console

    from .doctor import CheckResult, Report, diagnose

    cli = _cli()
    try:
        overrides: dict[str, Any] = {"data_dir": data_dir} if data_dir else {}
        settings = Settings(**overrides)
    except ValidationError as exc:
        fields = ", ".join(f"MSM_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors())
        report = Report({}, [CheckResult("configuration", "failed", f"invalid configuration: {fields}")])
    else:
        cli.configure_logging(settings.log_level, settings.log_format)
        try:
            report = anyio.run(diagnose, settings)
        except SharedMemoryError as exc:
            report = Report({}, [CheckResult("backends", "failed", exc.message)])
    if as_json:
        typer.echo(json.dumps(report.as_json(), indent=2, default=str))
    else:
        console = Console()
        colours = {"ok": "green", "warning": "yellow", "failed": "red"}
        for name, value in report.configuration.items():
            if value not in (None, "", [], {}):
                console.print(f"[dim]{name}[/dim] = {value}", highlight=False)
        for check in report.checks:
            colour = colours[check.status]
            console.print(
                f"[{colour}]{check.status:>7}[/{colour}]  [bold]{check.name}[/bold]: {check.summary}", highlight=False
            )
        console.print("[green]healthy[/green]" if report.healthy else "[red]not healthy[/red]")
    raise typer.Exit(0 if report.healthy else 1)


def tail(
    scope: ScopeOption = None,
    agent: Annotated[list[str] | None, typer.Option(help="only this agent id (repeatable)")] = None,
    event_type: Annotated[list[str] | None, typer.Option("--type", help="only this event type (repeatable)")] = None,
    last: Annotated[int, typer.Option("-n", "--last", min=0, max=1000, help="events shown first")] = 10,
    tenant: Tenant = None,
    data_dir: DataDir = None,
) -> None:
    """Follow a scope's events as any agent writes them (Ctrl-C to stop)."""
    from rich.console import Console

    from ..runtime import open_runtime
    from ..stores.event_search import PostgresEventSearch
    from .tail import console_printer, follow

    cli = _cli()
    settings = cli.start(data_dir=data_dir)
    target = _scope(scope) or Scope.parse(settings.default_scope)
    owner = _tenant(settings, tenant)
    try:
        filters = EventFilter(agent_ids=agent or None, event_types=event_type or None)
    except ValidationError as exc:
        cli.fail(f"invalid filter: {exc.errors()[0]['msg']}")
    console, status = Console(), Console(stderr=True)

    async def main() -> None:
        async with connections_for(settings) as connections, open_runtime(settings, connections=connections) as rt:
            search = PostgresEventSearch(connections.db)
            await follow(
                rt.bus, search, owner, target, filters=filters, last=last, show=console_printer(console),
                ready=lambda: status.print(f"[dim]following {target} in tenant {owner} (Ctrl-C to stop)[/dim]"),
            )  # fmt: skip

    with suppress(KeyboardInterrupt):
        cli.run(main)


def export(
    output: Annotated[Path | None, typer.Option("-o", "--output", help="file to write (default: stdout)")] = None,
    tenant: Tenant = None,
    scope: Annotated[str | None, typer.Option(help="only this scope (user:<id> or workspace:<id>)")] = None,
    with_vectors: Annotated[bool, typer.Option("--with-vectors", help="include the embeddings")] = False,
    data_dir: DataDir = None,
) -> None:
    """Export a tenant's workspaces, events and facts as JSONL (one per line, with a "kind")."""
    from .transfer import count, export_tenant

    cli = _cli()
    settings = cli.start(data_dir=data_dir)
    owner, target = _tenant(settings, tenant), _scope(scope)

    async def main() -> int:
        async with connections_for(settings) as connections:
            total = await count(connections, owner, target)
            out = output.open("w", encoding="utf-8") if output else sys.stdout
            try:
                with progress_bar(f"exporting {owner}", total) as advance:
                    return await export_tenant(
                        settings, connections, out, tenant=owner, scope=target, with_vectors=with_vectors,
                        progress=advance,
                    )  # fmt: skip
            finally:
                if output:
                    out.close()

    written = cli.run(main)
    typer.echo(f"exported {written} lines from tenant {owner}" + (f" to {output}" if output else ""), err=True)


def import_(
    source: Annotated[Path, typer.Argument(help="a JSONL file written by export ('-' for stdin)")],
    tenant: Annotated[str | None, typer.Option(help="import into this tenant (default: the exported one)")] = None,
    data_dir: DataDir = None,
) -> None:
    """Import a JSONL export; what is already there is skipped, so importing twice duplicates nothing."""
    from .transfer import import_lines, parse_lines

    cli = _cli()
    settings = cli.start(data_dir=data_dir)
    if tenant is not None:
        _tenant(settings, tenant)
    try:
        text = sys.stdin.read() if str(source) == "-" else source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        cli.fail(f"cannot read {source}: {type(exc).__name__}")
    try:
        records = parse_lines(text.splitlines())
    except SharedMemoryError as exc:
        cli.fail(exc.message)

    async def main() -> str:
        async with connections_for(settings) as connections:
            with progress_bar("importing", len(records)) as advance:
                report = await import_lines(settings, connections, records, tenant=tenant, progress=advance)
        return str(report.summary())

    typer.echo(cli.run(main), err=True)


def erase(
    tenant: Annotated[str, typer.Option(help="the tenant to erase from (alone: the whole tenant)")],
    scope: Annotated[str | None, typer.Option(help="only this scope: user:<id> or workspace:<id>")] = None,
    agent: Annotated[str | None, typer.Option(help="only this agent's events (in --scope, or everywhere)")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
    data_dir: DataDir = None,
) -> None:
    """Erase a user's or workspace's scope, an agent's events, or a whole tenant, from PostgreSQL, Redis and
    the facts; recorded in the audit log. Cannot be undone."""
    from ..stores.erasure import ErasureTarget
    from .erase import erase as run_erase

    cli = _cli()
    settings = cli.start(data_dir=data_dir)
    owner, target_scope = _tenant(settings, tenant), _scope(scope)
    if agent is not None:
        try:
            validate_identifier(agent, "agent")
        except SharedMemoryError as exc:
            cli.fail(f"--agent: {exc.message}")
    target = ErasureTarget(owner, target_scope, agent)
    what = (
        target.describe()
        if (target_scope or agent)
        else f"EVERYTHING of tenant {owner} (events, facts, workspaces, tokens)"
    )
    if not yes:
        if not sys.stdin.isatty():
            cli.fail(f"erase {what}: pass --yes to confirm (no terminal to ask)")
        typer.confirm(f"Erase {what}? This cannot be undone", abort=True)

    async def main() -> str:
        async with connections_for(settings) as connections:
            return (await run_erase(settings, connections, target)).summary()

    typer.echo(cli.run(main))
