"""``reembed --pending``: what waits for a vector, what the model refused and why, then embed it all."""

from __future__ import annotations

import typer

from ..settings import Settings
from .commands import progress_bar


async def embed_pending(settings: Settings) -> None:
    from ..runtime import open_runtime

    async with open_runtime(settings) as runtime:
        backlog = runtime.embeddings.backlog
        before = await backlog.counts()
        typer.echo(f"{before.waiting} events wait for a vector, {before.rejected} were refused by the model")
        for refused in await backlog.rejected(limit=10):
            typer.echo(f"  refused: tenant {refused.tenant_id}, event {refused.event_id}: {refused.reason}")
        retried = await backlog.retry_rejected()
        with progress_bar("embedding", before.waiting + retried) as advance:
            done = await runtime.embeddings.drain(advance)
        after = await backlog.counts()
    # What still waits is claimed by a running server (or written since): it embeds them.
    typer.echo(f"embedded {done} events; {after.waiting} still wait, {after.rejected} refused again")
    if after.rejected:
        raise typer.Exit(1)
