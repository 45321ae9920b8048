"""Row-level security, the second wall between tenants: through the application role, a query that forgets
its tenant filter (or names another tenant) sees and changes nothing of another tenant, and with no tenant
set it sees nothing at all. The owner's pool does the cross-tenant work and the application role's refuses it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
import asyncpg
import pytest

from mcp_shared_memory.errors import ConfigError, StoreUnavailable
from mcp_shared_memory.memory import SharedMemory
from mcp_shared_memory.models import Principal
from mcp_shared_memory.runtime import BackendUrls, Connections, owner_pool
from mcp_shared_memory.settings import Settings
from mcp_shared_memory.stores.migrations import available_migrations
from mcp_shared_memory.stores.postgres import PgConnection, PostgresPool

from .conftest import Backdoor

pytestmark = pytest.mark.anyio

# The tables the request path reads and writes.
SERVED = ("shared_episodic_memories", "msm_cache_outbox", "workspaces", "semantic_facts")
# Tenant tables only the owner reaches.
OWNER_ONLY = ("api_tokens", "audit_log")

TENANT_TABLES = """
SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
       EXISTS (SELECT FROM pg_policies p WHERE p.tablename = c.relname AND p.schemaname = n.nspname
               AND p.qual LIKE '%current_setting(''msm.tenant''::text, true)%'
               AND p.with_check LIKE '%current_setting(''msm.tenant''::text, true)%') AS has_policy
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
WHERE c.relkind = 'r' AND n.nspname = current_schema()
ORDER BY 1
"""

OWN_ADVISORY_LOCKS = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"

APP_ROLE_ATTRIBUTES = """
SELECT current_user AS app, session_user AS login, r.rolsuper, r.rolbypassrls,
       bool_or(pg_has_role(current_user, c.relowner, 'USAGE')) AS owns_a_table
FROM pg_roles r, pg_class c
WHERE r.rolname = current_user AND c.relname = ANY($1::text[]) AND c.relkind = 'r'
GROUP BY 1, 2, 3, 4
"""


async def seed_two_tenants(memory: SharedMemory, a: Principal, b: Principal) -> None:
    """An event, a workspace and a fact in each tenant, written through the application role."""
    for principal in (a, b):
        await memory.write_event(principal, f"the deploy of {principal.tenant} went fine", importance=0.9)
        await memory.create_workspace(principal, f"ship {principal.tenant}")
        await memory.store_fact(principal, f"{principal.tenant} deploys on Tuesdays")


@asynccontextmanager
async def one_connection(settings: Settings) -> AsyncIterator[PostgresPool]:
    """``one_connection_pool``, opened."""
    pool = one_connection_pool(settings)
    await pool.open(migrate=False)
    try:
        yield pool
    finally:
        await pool.close()


async def assert_no_tenant(conn: PgConnection) -> None:
    """No tenant set, and so nothing of any tenant visible."""
    assert not await conn.fetchval("SELECT current_setting('msm.tenant', true)")
    for table in SERVED:
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table


def one_connection_pool(settings: Settings) -> PostgresPool:
    """An application role's pool of one connection: each acquisition gets the connection released last."""
    assert settings.database_url is not None
    dsn = settings.database_url.get_secret_value()
    return PostgresPool(dsn, min_size=1, max_size=1, timeout=settings.db_timeout, app_role=True)


async def test_the_application_role_is_neither_superuser_nor_owner_nor_bypassrls(connections: Connections) -> None:
    assert connections.tenant_db is not None
    async with connections.tenant_db.connection() as conn:
        role = await conn.fetchrow(APP_ROLE_ATTRIBUTES, [*SERVED, *OWNER_ONLY])
    assert role is not None
    assert role["app"] == "msm_app"
    assert not role["rolsuper"] and not role["rolbypassrls"] and not role["owns_a_table"]


async def test_the_embedded_postgres_gives_the_application_role_a_login_of_its_own(
    connections: Connections, settings: Settings
) -> None:
    """Embedded mode serves requests with a login that is msm_app itself, not the superuser after SET ROLE."""
    if settings.database_owner_url is None:
        pytest.skip("an external test database: the one login serves as msm_app after SET ROLE")
    assert connections.tenant_db is not None
    async with connections.tenant_db.connection() as conn:
        assert await conn.fetchval("SELECT session_user") == "msm_app"


async def test_every_table_with_a_tenant_id_has_the_tenant_policy(backdoor: Backdoor) -> None:
    """A table added later with a tenant_id and no policy fails here (row-level security is not forced:
    the owner does the cross-tenant work)."""
    rows = await backdoor.db.fetch(TENANT_TABLES)
    assert {r["relname"] for r in rows} >= {*SERVED, *OWNER_ONLY}
    for row in rows:
        assert row["relrowsecurity"] and row["has_policy"], row["relname"]
        assert not row["relforcerowsecurity"], row["relname"]


async def test_a_query_without_a_tenant_filter_returns_nothing_of_another_tenant(
    memory: SharedMemory, alice: Principal, other_tenant: Principal, connections: Connections, backdoor: Backdoor
) -> None:
    await seed_two_tenants(memory, alice, other_tenant)
    assert connections.tenant_db is not None
    for table in ("shared_episodic_memories", "workspaces", "semantic_facts"):
        owner_sees = {r["tenant_id"] for r in await backdoor.db.fetch(f"SELECT DISTINCT tenant_id FROM {table}")}
        assert {alice.tenant, other_tenant.tenant} <= owner_sees, table
        async with connections.tenant_db.tenant(alice.tenant) as conn:
            seen = {r["tenant_id"] for r in await conn.fetch(f"SELECT DISTINCT tenant_id FROM {table}")}
            named = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id = $1", other_tenant.tenant)
        assert seen == {alice.tenant}, table
        assert named == 0, table  # a filter naming another tenant finds nothing either


async def test_with_no_tenant_set_nothing_is_visible(
    memory: SharedMemory, alice: Principal, other_tenant: Principal, settings: Settings
) -> None:
    await seed_two_tenants(memory, alice, other_tenant)
    async with one_connection(settings) as pool:
        async with pool.tenant(alice.tenant) as conn:
            assert await conn.fetchval("SELECT count(*) FROM shared_episodic_memories") > 0
        async with pool.connection() as conn:
            await assert_no_tenant(conn)  # cleared on release


async def kept_tenant(pool: PostgresPool) -> str:
    """The tenant set on the pool's (one) connection as it sits in the pool, read past the pool's checks."""
    raw = pool._open_pool
    async with raw.acquire() as conn:
        return str(await conn.fetchval("SELECT current_setting('msm.tenant', true)"))


async def test_a_connection_kept_with_a_tenant_after_reads_serves_no_one_else_with_it(
    memory: SharedMemory, alice: Principal, other_tenant: Principal, settings: Settings
) -> None:
    # After plain reads a connection goes back to the pool without a reset and keeps its tenant, so the next
    # reader of that tenant saves two round trips. Whoever takes it next for another tenant, for no tenant,
    # or for more than reads, must see exactly what a freshly reset connection shows.
    await seed_two_tenants(memory, alice, other_tenant)
    tenants = "SELECT DISTINCT tenant_id FROM shared_episodic_memories"
    async with one_connection(settings) as pool:
        async with pool.tenant(alice.tenant, reads_only=True) as conn:
            assert {r["tenant_id"] for r in await conn.fetch(tenants)} == {alice.tenant}
        assert await kept_tenant(pool) == alice.tenant  # back in the pool without a reset
        async with pool.tenant(alice.tenant, reads_only=True) as conn:  # kept: not set again
            assert {r["tenant_id"] for r in await conn.fetch(tenants)} == {alice.tenant}
        async with pool.tenant(other_tenant.tenant, reads_only=True) as conn:
            assert {r["tenant_id"] for r in await conn.fetch(tenants)} == {other_tenant.tenant}
        async with pool.connection() as conn:
            await assert_no_tenant(conn)
        # A writer's session state (an advisory lock, a setting) ends with its use, after kept tenants too.
        async with pool.tenant(alice.tenant, reads_only=True) as conn:
            await conn.fetch(tenants)
        async with pool.tenant(alice.tenant) as conn:
            await conn.execute("SELECT pg_advisory_lock(4242)")
            await conn.execute("SET plan_cache_mode = force_custom_plan")
        async with pool.connection() as conn:
            assert await conn.fetchval(OWN_ADVISORY_LOCKS) == 0
            assert await conn.fetchval("SHOW plan_cache_mode") == "auto"
            await assert_no_tenant(conn)
        # A block that undid what it set (a writer's lock) says so, and goes back like a read: tenant kept.
        async with pool.tenant(alice.tenant) as conn:
            await conn.execute("SELECT pg_advisory_lock(4243)")
            assert await conn.fetchval("SELECT pg_advisory_unlock(4243)")
            conn.session_restored()
        assert await kept_tenant(pool) == alice.tenant
        async with pool.connection() as conn:
            assert await conn.fetchval(OWN_ADVISORY_LOCKS) == 0
            await assert_no_tenant(conn)
        # A reads-only block that fails is reset all the same.
        with pytest.raises(ZeroDivisionError):
            async with pool.tenant(alice.tenant, reads_only=True) as conn:
                await conn.execute("SET plan_cache_mode = force_generic_plan")
                raise ZeroDivisionError
        async with pool.connection() as conn:
            assert await conn.fetchval("SHOW plan_cache_mode") == "auto"
            await assert_no_tenant(conn)


async def test_kept_tenants_never_leak_between_concurrent_readers_writers_and_untenanted_uses(
    memory: SharedMemory, alice: Principal, other_tenant: Principal, settings: Settings
) -> None:
    # Two connections shared by many concurrent uses of two tenants: reads (which keep their tenant), uses that
    # restore the session or do not, uses that fail, and uses with no tenant. Each sees its own rows only.
    await seed_two_tenants(memory, alice, other_tenant)
    assert settings.database_url is not None
    pool = PostgresPool(
        settings.database_url.get_secret_value(), min_size=2, max_size=2, timeout=settings.db_timeout, app_role=True
    )
    await pool.open(migrate=False)
    tenants = "SELECT DISTINCT tenant_id FROM shared_episodic_memories"

    async def use(i: int) -> None:
        tenant = (alice.tenant, other_tenant.tenant)[i % 2]
        kind = i % 5
        if kind == 4:
            async with pool.connection() as conn:
                await assert_no_tenant(conn)
            return
        with contextlib.suppress(ZeroDivisionError):
            async with pool.tenant(tenant, reads_only=kind == 0) as conn:
                assert {r["tenant_id"] for r in await conn.fetch(tenants)} == {tenant}
                await anyio.lowlevel.checkpoint()
                if kind == 1:
                    conn.session_restored()
                elif kind == 3:
                    raise ZeroDivisionError

    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(400):
                    tg.start_soon(use, i * 7 % 400)
    finally:
        await pool.close()


async def test_a_write_for_another_tenant_is_refused(
    memory: SharedMemory, alice: Principal, other_tenant: Principal, connections: Connections, backdoor: Backdoor
) -> None:
    await seed_two_tenants(memory, alice, other_tenant)
    assert connections.tenant_db is not None
    async with connections.tenant_db.tenant(alice.tenant) as conn:
        with pytest.raises(StoreUnavailable) as refused:
            await conn.execute(
                "INSERT INTO workspaces (tenant_id, id, task, created_by) VALUES ($1, 'planted', 'x', 'mallory')",
                other_tenant.tenant,
            )
        assert isinstance(refused.value.__cause__, asyncpg.InsufficientPrivilegeError)  # WITH CHECK
        changed = await conn.execute(
            "UPDATE semantic_facts SET fact = 'overwritten' WHERE tenant_id = $1", other_tenant.tenant
        )
        deleted = await conn.execute("DELETE FROM shared_episodic_memories WHERE tenant_id <> $1", alice.tenant)
    assert changed == "UPDATE 0" and deleted == "DELETE 0"
    facts = await backdoor.db.fetch("SELECT fact FROM semantic_facts WHERE tenant_id = $1", other_tenant.tenant)
    assert facts and all(r["fact"] != "overwritten" for r in facts)


async def test_the_application_role_reaches_neither_tokens_nor_the_audit_trail(
    connections: Connections, alice: Principal
) -> None:
    """Token look-ups by digest and the audit copy run on the owner's pool: the application role has no
    privilege on those tables at all."""
    assert connections.tenant_db is not None
    for table in (*OWNER_ONLY, "memory_meta", "msm_schema_migrations"):
        async with connections.tenant_db.tenant(alice.tenant) as conn:
            with pytest.raises(StoreUnavailable) as refused:
                await conn.fetch(f"SELECT * FROM {table} LIMIT 1")
        assert isinstance(refused.value.__cause__, asyncpg.InsufficientPrivilegeError), table


async def test_cross_tenant_work_is_refused_on_the_application_roles_pool(connections: Connections) -> None:
    assert connections.tenant_db is not None
    with pytest.raises(RuntimeError, match="owner's pool"):
        async with connections.tenant_db.cross_tenant():
            pass
    with pytest.raises(RuntimeError, match="owner's pool"):
        await connections.tenant_db.fetchval("SELECT count(*) FROM shared_episodic_memories")
    assert await connections.db.exempt_from_rls()
    assert not await connections.tenant_db.exempt_from_rls()


async def test_one_login_for_everything_serves_requests_as_the_application_role(
    settings: Settings, memory: SharedMemory, alice: Principal, other_tenant: Principal
) -> None:
    """With only MSM_DATABASE_URL, the owner's (or a superuser's) login, requests still run as msm_app,
    and RESET ALL between uses does not undo it."""
    await seed_two_tenants(memory, alice, other_tenant)
    owner_url = settings.database_owner_url or settings.database_url
    one_login = one_connection_pool(settings.model_copy(update={"database_url": owner_url}))
    await one_login.open(migrate=False)
    try:
        for _ in range(2):
            async with one_login.tenant(alice.tenant) as conn:
                assert await conn.fetchval("SELECT current_user") == "msm_app"
                tenants = {r["tenant_id"] for r in await conn.fetch("SELECT tenant_id FROM workspaces")}
            assert tenants == {alice.tenant}
    finally:
        await one_login.close()


@pytest.mark.parametrize("migrate", [True, False])
async def test_a_login_under_row_level_security_is_refused_as_the_owner(settings: Settings, migrate: bool) -> None:
    """Only the application login configured (no owner): migrations and maintenance could not work, so the
    server says which setting to add instead of silently seeing no tenant's rows."""
    if settings.database_owner_url is None:
        pytest.skip("an external test database has no separate application login")
    assert settings.database_url is not None
    urls = BackendUrls(settings.database_url.get_secret_value(), "")
    with pytest.raises(ConfigError, match="MSM_DATABASE_OWNER_URL") as refused:
        async with owner_pool(urls, settings, migrate=migrate):
            pass
    assert "postgresql:" not in refused.value.message and "host=" not in refused.value.message  # no DSN


async def test_the_migration_is_idempotent(backdoor: Backdoor) -> None:
    (sql,) = [sql for _, name, sql in available_migrations() if name == "row_level_security"]
    await backdoor.db.execute(sql)  # the live database has it already
    rows = await backdoor.db.fetch(TENANT_TABLES)
    assert all(r["relrowsecurity"] and r["has_policy"] for r in rows)


async def test_full_text_matching_is_leakproof_where_the_owner_is_a_superuser(backdoor: Backdoor) -> None:
    """Else a policy keeps @@ out of index conditions and full-text statistics read the whole scope."""
    if not await backdoor.db.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        pytest.skip("only a superuser may mark ts_match_vq LEAKPROOF")
    leakproof = "SELECT proleakproof FROM pg_proc WHERE oid = 'ts_match_vq(tsvector, tsquery)'::regprocedure"
    assert await backdoor.db.fetchval(leakproof)
