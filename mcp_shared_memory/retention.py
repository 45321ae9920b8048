"""Retention: events older than ``MSM_RETENTION_USER_DAYS`` / ``MSM_RETENTION_WORKSPACE_DAYS`` (0: kept
forever) are deleted, across tenants, by the background maintenance (hourly) of every server process.

Batches are claimed with ``SKIP LOCKED``, so processes sweeping at once delete different rows; each batch
is committed before Redis is touched. Deleted events leave their scope's recent cache and the scope's
subscribers are told. Facts consolidated from them are kept (a fact outlives its sources, as after
``retract_event``); workspaces are kept.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from .announcer import Announcer
from .models import ScopeType
from .settings import Settings
from .stores.episodic import PostgresEpisodicStore

log = logging.getLogger(__name__)

BATCH = 1000


def retention_days(settings: Settings) -> dict[ScopeType, int]:
    """The configured retention per scope type, in days (only those with one)."""
    days: dict[ScopeType, int] = {
        "user": settings.retention_user_days,
        "workspace": settings.retention_workspace_days,
    }
    return {scope_type: n for scope_type, n in days.items() if n > 0}


async def sweep_retention(
    settings: Settings,
    episodic: PostgresEpisodicStore,
    announcer: Announcer,
    *,
    now: datetime | None = None,
    batch: int = BATCH,
) -> int:
    """Delete the events past their scope type's retention (``episodic`` on the owner's pool); returns how
    many."""
    now = now or datetime.now(UTC)
    total = 0
    for scope_type, days in retention_days(settings).items():
        while expired := await episodic.expire(scope_type, before=now - timedelta(days=days), limit=batch):
            for tenant, scope, events in expired:
                await announcer.removed(tenant, scope, events)
                total += len(events)
    return total
