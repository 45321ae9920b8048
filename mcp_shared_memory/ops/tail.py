"""``mcp-shared-memory tail``: a scope's events as they are written, from any process or replica.

The scope's bus channel is subscribed first, then the last N events are read from PostgreSQL, so nothing
written in between is missed. A bus message carries ids only; each one wakes the reader, which reads the
events after its cursor from PostgreSQL (a message lost while Redis reconnects is caught up by the next).
Filters (agent, event type) apply to both.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable

import anyio
from rich.console import Console
from rich.markup import escape

from ..event_filter import EventFilter
from ..models import Event, Scope
from ..stores.bus import RedisBus
from ..stores.event_search import PostgresEventSearch
from ..stores.messages import BusMessage, EventWritten, Topic

PAGE = 100
COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "bright_red", "bright_cyan", "bright_magenta")


def agent_colour(agent_id: str) -> str:
    return COLOURS[hashlib.blake2s(agent_id.encode(), digest_size=1).digest()[0] % len(COLOURS)]


def render(event: Event) -> str:
    """One line of Rich markup: time, seq, agent (type), event type, importance, content."""
    when = event.created_at.astimezone().strftime("%H:%M:%S")
    colour = agent_colour(event.agent_id)
    content = escape(event.content.replace("\n", " ⏎ "))
    return (
        f"[dim]{when} #{event.seq}[/dim] [{colour}]{escape(event.agent_id)} ({escape(event.agent_type)})[/{colour}] "
        f"[bold]{escape(event.event_type)}[/bold] [dim]imp={event.importance:.2f}[/dim] {content}"
    )


async def follow(
    bus: RedisBus,
    search: PostgresEventSearch,
    tenant: str,
    scope: Scope,
    *,
    filters: EventFilter,
    last: int,
    show: Callable[[Event], None],
    ready: Callable[[], None] = lambda: None,
) -> None:
    """Show the last ``last`` events, then every new one, until cancelled."""
    send, receive = anyio.create_memory_object_stream[int](100)

    async def on_message(message: BusMessage) -> None:
        if isinstance(message, EventWritten) and message.tenant == tenant and message.scope == scope:
            # Full: the reader is behind, and reads everything after its cursor anyway.
            with contextlib.suppress(anyio.WouldBlock):
                send.send_nowait(message.seq)

    remove = bus.add_listener(on_message)
    try:
        async with bus.subscription(Topic(tenant, scope)), receive:
            newest = await search.recent(tenant, scope, filters, limit=last) if last else []
            cursor = max((e.seq for e in newest), default=0)
            if not newest:  # start after what is there now, whatever the filters keep
                latest = await search.recent(tenant, scope, EventFilter(), limit=1)
                cursor = latest[0].seq if latest else 0
            for event in reversed(newest):
                show(event)
            ready()
            async for _ in receive:
                while page := await search.recent(tenant, scope, filters, limit=PAGE, since_seq=cursor):
                    for event in page:
                        show(event)
                    cursor = page[-1].seq
                    if len(page) < PAGE:
                        break
    finally:
        remove()


def console_printer(console: Console) -> Callable[[Event], None]:
    def show(event: Event) -> None:
        console.print(render(event), highlight=False, soft_wrap=True)

    return show
