"""The ``mcp-shared-memory`` command: serve (stdio or HTTP), migrate, tokens, re-embedding, the audit trail."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import anyio
import typer
from pydantic import ValidationError

from . import logs
from .errors import SharedMemoryError
from .logs import LogFormat
from .ops.commands import progress_bar
from .ops.commands import register as register_operator_commands
from .ops.pending import embed_pending
from .settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Shared memory for fleets of AI agents (MCP).")
token_app = typer.Typer(no_args_is_help=True, help="Bearer tokens for the HTTP transport.")
app.add_typer(token_app, name="token")

log = logging.getLogger("mcp_shared_memory")


class Transport(StrEnum):
    stdio = "stdio"
    http = "http"


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    """Logs go to stderr only: stdout belongs to the stdio transport (``logs.py``)."""
    logs.configure_logging(level, log_format)


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        fields = ", ".join(f"MSM_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors())
        fail(f"invalid configuration: {fields}")


def fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def run(coro_fn: Any, *args: Any) -> Any:
    try:
        return anyio.run(coro_fn, *args)
    except SharedMemoryError as exc:
        fail(exc.message)


DataDir = Annotated[Path | None, typer.Option(help="embedded backends' data dir [env: MSM_DATA_DIR]")]
LogLevel = Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING, ERROR [env: MSM_LOG_LEVEL; default WARNING]")]


def start(**overrides: Any) -> Settings:
    """Settings for a command, with logging configured and, since this is a program's entry point,
    SIGTERM/SIGHUP mapped to a clean exit so embedded backends are released."""
    settings = load_settings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    from .embedded import install_exit_signal_handlers

    install_exit_signal_handlers()
    return settings


@app.command()
def serve(
    transport: Annotated[Transport, typer.Option(help="stdio for local clients, http for remote agents")] = (
        Transport.stdio
    ),
    host: Annotated[str | None, typer.Option(help="HTTP bind address [env: MSM_HOST; default 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port [env: MSM_PORT; default 8765]")] = None,
    public_url: Annotated[
        str | None, typer.Option(help="external URL of the HTTP server (OAuth metadata) [env: MSM_PUBLIC_URL]")
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="stdio binding [env: MSM_TENANT]")] = None,
    agent_id: Annotated[str | None, typer.Option(help="stdio binding [env: MSM_AGENT_ID]")] = None,
    agent_type: Annotated[str | None, typer.Option(help="stdio binding [env: MSM_AGENT_TYPE]")] = None,
    scope: Annotated[str | None, typer.Option(help="default scope, e.g. user:alice [env: MSM_SCOPE]")] = None,
    allowed_scopes: Annotated[
        str | None,
        typer.Option(help="comma-separated patterns, e.g. 'user:alice,workspace:*' [env: MSM_ALLOWED_SCOPES]"),
    ] = None,
    data_dir: DataDir = None,
    log_level: LogLevel = None,
) -> None:
    """Run the MCP server (stdio by default; zero-config with embedded backends)."""
    settings = start(
        host=host, port=port, public_url=public_url, tenant=tenant, agent_id=agent_id, agent_type=agent_type,
        scope=scope, allowed_scopes=allowed_scopes, data_dir=data_dir, log_level=log_level,
    )  # fmt: skip
    try:
        if transport is Transport.stdio:
            from .server.app import build_server
            from .server.state import ServerLifespan, stdio_principal

            if settings.embedding_threads is None:
                # One stdio process per agent: a single ONNX thread per process keeps p99 down when
                # several agents embed at once, at the same single-call latency.
                settings = settings.model_copy(update={"embedding_threads": 1})
            lifespan = ServerLifespan(settings, local_principal=stdio_principal(settings), background=True)
            build_server(lifespan).run("stdio")
        else:
            import uvicorn
            from uvicorn.config import LOGGING_CONFIG

            from .server.http import create_http_app

            uvicorn.run(
                create_http_app(settings), host=settings.host, port=settings.port,
                log_level=settings.log_level.lower(), access_log=False,
                # JSON lines: uvicorn's loggers go through the root handler instead of its own text ones.
                log_config=None if settings.log_format == "json" else LOGGING_CONFIG,
            )  # fmt: skip
    except SharedMemoryError as exc:
        fail(exc.message)


@app.command()
def migrate(data_dir: DataDir = None, log_level: LogLevel = None) -> None:
    """Apply the database migrations (the server also applies them at start-up)."""
    settings = start(data_dir=data_dir, log_level=log_level)

    async def main() -> None:
        from .maintenance import fill_lexemes
        from .runtime import open_admin

        async with open_admin(settings) as admin:
            applied = admin.applied_migrations
            indexed = await fill_lexemes(admin.episodic)
        typer.echo("applied: " + ", ".join(applied) if applied else "database is up to date")
        if indexed:
            typer.echo(f"indexed {indexed} older events for lexical search")

    run(main)


DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(value: str, option: str) -> timedelta:
    """``90s``, ``30m``, ``12h``, ``7d``, ``2w``."""
    match = DURATION.match(value)
    if match is None or int(match[1]) == 0:
        fail(f"{option}: expected a positive duration such as 30m, 12h, 7d or 2w, not {value!r}")
    return timedelta(**{DURATION_UNITS[match[2]]: int(match[1])})


@token_app.command("create")
def token_create(
    tenant: Annotated[str, typer.Option(help="the tenant this token is bound to")],
    agent_id: Annotated[str, typer.Option(help="the agent id writes are attributed to")],
    scope: Annotated[
        list[str],
        typer.Option(
            "--scope",
            help="grant (repeatable): a scope or a prefix ending in *, then =r (read), =rw (read and write, the "
            "default) or =rwa (also manage workspaces): user:alice, user:alice=r, workspace:*=rw, *=r",
        ),
    ],
    agent_type: Annotated[str, typer.Option()] = "agent",
    default_scope: Annotated[str | None, typer.Option(help="scope used when a tool names none")] = None,
    description: Annotated[str, typer.Option()] = "",
    expires_in: Annotated[
        str | None, typer.Option(help="lifetime, e.g. 30m, 12h, 7d, 2w (default: until revoked)")
    ] = None,
    expires_days: Annotated[int | None, typer.Option(min=1, hidden=True)] = None,
    data_dir: DataDir = None,
) -> None:
    """Create a token. It is printed once and only its hash is stored."""
    if expires_in is not None and expires_days is not None:
        fail("give --expires-in or --expires-days, not both")
    lifetime = parse_duration(expires_in, "--expires-in") if expires_in is not None else None
    if expires_days is not None:
        lifetime = timedelta(days=expires_days)
    settings = start(data_dir=data_dir)
    expires = datetime.now(UTC) + lifetime if lifetime is not None else None
    if default_scope is None and len(scope) == 1 and "*" not in scope[0]:
        default_scope = scope[0].partition("=")[0]

    async def main() -> None:
        from .runtime import open_admin

        async with open_admin(settings) as admin:
            token, record = await admin.tokens.create(
                tenant=tenant, agent_id=agent_id, agent_type=agent_type, allowed_scopes=scope,
                default_scope=default_scope, description=description, expires_at=expires,
            )  # fmt: skip
        typer.echo(f"token id: {record.id}", err=True)
        if record.expires_at is not None:
            typer.echo(f"expires: {record.expires_at.isoformat(timespec='seconds')}", err=True)
        typer.echo("store this token now; it cannot be shown again:", err=True)
        typer.echo(token)

    run(main)


@token_app.command("list")
def token_list(
    tenant: Annotated[str | None, typer.Option()] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    data_dir: DataDir = None,
) -> None:
    """List tokens (never the secrets)."""
    settings = start(data_dir=data_dir)

    async def main() -> None:
        from .runtime import open_admin

        async with open_admin(settings) as admin:
            records = await admin.tokens.list(tenant=tenant)
        if as_json:
            typer.echo(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table("id", "tenant", "agent", "grants", "created", "expires", "state")
        for r in records:
            state = "revoked" if r.revoked_at else ("expired" if r.expired() else "active")
            expires = r.expires_at.strftime("%Y-%m-%d %H:%M") if r.expires_at else ""
            table.add_row(r.id, r.tenant_id, f"{r.agent_id} ({r.agent_type})", ",".join(r.allowed_scopes),
                          r.created_at.strftime("%Y-%m-%d %H:%M"), expires, state)  # fmt: skip
        Console().print(table)

    run(main)


@token_app.command("revoke")
def token_revoke(token_id: str, data_dir: DataDir = None) -> None:
    """Revoke a token by id (takes effect on every server within seconds)."""
    settings = start(data_dir=data_dir)

    async def main() -> None:
        from .runtime import open_admin

        async with open_admin(settings) as admin:
            await admin.tokens.revoke(token_id)
        typer.echo(f"revoked {token_id}")

    run(main)


def parse_time(value: str | None, option: str) -> datetime | None:
    """An ISO 8601 time; without a zone it is UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        fail(f"{option}: expected an ISO 8601 time such as 2026-01-31 or 2026-01-31T12:00:00+00:00")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@app.command()
def audit(
    tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None,
    agent: Annotated[str | None, typer.Option(help="only this agent id")] = None,
    tool: Annotated[str | None, typer.Option(help="only this tool name or resource URI")] = None,
    outcome: Annotated[str | None, typer.Option(help="ok, error (any failure), or an error class name")] = None,
    since: Annotated[str | None, typer.Option(help="from this ISO 8601 time (UTC unless given)")] = None,
    until: Annotated[str | None, typer.Option(help="before this ISO 8601 time (UTC unless given)")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000)] = 100,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    data_dir: DataDir = None,
) -> None:
    """Show the audit trail, newest first: who called which tool or read which resource, when, with which
    outcome (never content)."""
    settings = start(data_dir=data_dir)
    window = parse_time(since, "--since"), parse_time(until, "--until")

    async def main() -> None:
        from .runtime import open_admin

        async with open_admin(settings) as admin:
            records = await admin.audit.query(
                tenant=tenant, agent=agent, target=tool, outcome=outcome, since=window[0], until=window[1],
                limit=limit,
            )  # fmt: skip
        if as_json:
            typer.echo(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table("time", "tenant", "agent", "method", "target", "scope", "outcome", "results", "ms")
        for r in records:
            table.add_row(r.at.strftime("%Y-%m-%d %H:%M:%S"), r.tenant_id, f"{r.agent_id} ({r.agent_type})",
                          r.method, r.target, r.scope or "", r.outcome,
                          "" if r.result_count is None else str(r.result_count), f"{r.latency_ms:.1f}")  # fmt: skip
        Console().print(table)

    run(main)


@app.command()
def reembed(
    pending: Annotated[
        bool, typer.Option("--pending", help="only embed the events still waiting, retrying those the model refused")
    ] = False,
    data_dir: DataDir = None,
    log_level: LogLevel = None,
) -> None:
    """Re-embed every event and fact with the configured model (after changing models; stop servers first).
    With --pending: show and embed what waits for a vector (or what the model refused), keeping the rest."""
    settings = start(data_dir=data_dir, log_level=log_level)

    async def main() -> None:
        from .runtime import open_runtime

        if pending:
            await embed_pending(settings)
            return
        async with open_runtime(settings, check_model=False) as runtime:
            with progress_bar(f"re-embedding with {settings.embedding_model_id}", None) as advance:
                cleared, done, facts = await runtime.reembed(advance)
        typer.echo(f"re-embedded {done} of {cleared} events and {facts} facts with {settings.embedding_model_id}")

    run(main)


@app.command()
def consolidate(
    tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None,
    data_dir: DataDir = None,
    log_level: LogLevel = None,
) -> None:
    """Turn unconsolidated events into shared facts (the server also does this periodically)."""
    settings = start(data_dir=data_dir, log_level=log_level)

    async def main() -> None:
        from .runtime import open_runtime

        async with open_runtime(settings) as runtime:
            with progress_bar("consolidating scopes", None) as advance:
                report = await runtime.maintenance.consolidator.run(
                    tenant=tenant, progress=lambda _, scopes: advance(1, total=scopes)
                )
        typer.echo(
            f"consolidated {report.events} events in {report.scopes} scopes: {report.stored} facts stored, "
            f"{report.confirmed} confirmed, {report.skipped_busy} scopes busy in another process"
        )

    run(main)


# doctor, tail, export, import, erase
register_operator_commands(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
