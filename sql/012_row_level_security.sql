-- Row-level security: the second wall between tenants (the first is the tenant filter of every query).
-- The server serves requests as msm_app, a role that is neither the tables' owner nor a superuser nor
-- BYPASSRLS, and sets msm.tenant on each connection it takes from its pool; on every tenant table a policy
-- compares it with tenant_id. With no tenant set, current_setting() is NULL (or '' after a RESET) and
-- matches no row. The owner (who applies these migrations) is exempt, and does the few cross-tenant jobs.
-- A table with a tenant_id added later needs the same three statements and its own grant.

-- NOLOGIN: a deployment logs in as msm_app only where it made it a LOGIN role itself (the embedded server
-- and docker-compose do), else grants it to its own login role.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'msm_app') THEN
    CREATE ROLE msm_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
  END IF;
EXCEPTION
  -- Roles are per cluster: a migration of another database may create it at the same moment.
  WHEN duplicate_object OR unique_violation THEN NULL;
  WHEN insufficient_privilege THEN
    RAISE EXCEPTION 'the role msm_app does not exist and % may not create it', current_user
      USING ERRCODE = 'insufficient_privilege',
            HINT = 'as a role with CREATEROLE run: CREATE ROLE msm_app NOLOGIN; then start again';
END $$;

-- An owner without a separate application login serves as msm_app after SET ROLE (see stores/postgres.py),
-- which needs membership (superusers have it; PostgreSQL 16+ also needs the SET option). Best effort: a
-- deployment with an application login does not need it.
DO $$
BEGIN
  IF current_setting('server_version_num')::int >= 160000 THEN
    IF NOT pg_has_role(current_user, 'msm_app', 'SET') THEN
      EXECUTE format('GRANT msm_app TO %I WITH INHERIT FALSE, SET TRUE', current_user);
    END IF;
  ELSIF NOT pg_has_role(current_user, 'msm_app', 'MEMBER') THEN
    EXECUTE format('GRANT msm_app TO %I', current_user);
  END IF;
EXCEPTION WHEN insufficient_privilege OR invalid_grant_operation THEN
  RAISE NOTICE 'msm_app was not granted to %: serve with a login role that has msm_app', current_user;
END $$;

DO $$ BEGIN
  EXECUTE format('GRANT USAGE ON SCHEMA %I TO msm_app', current_schema());
END $$;

-- Under a policy, PostgreSQL keeps an operator out of index conditions unless its function is LEAKPROOF,
-- which @@ (ts_match_vq) is not: full-text conditions then read every event of the scope instead of the GIN
-- index (measured: a question's term statistics over a 100k-event scope, 0.1 s as the owner, 0.5 s as
-- msm_app). It reveals nothing of a row but through its result, and the wall guards against a query that
-- forgets its tenant, not against SQL written by an attacker (who could set msm.tenant anyway): so where
-- the owner may say so (a superuser, as in the embedded server and docker-compose), it does. Elsewhere
-- full-text search stays correct, only slower on large scopes.
DO $$
BEGIN
  IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
    ALTER FUNCTION pg_catalog.ts_match_vq(tsvector, tsquery) LEAKPROOF;
  END IF;
END $$;

-- What the request path touches. api_tokens, audit_log, memory_meta and the migration ledger are the
-- owner's alone (token look-up by digest, the audit copy and the model guard run as the owner).
GRANT SELECT, INSERT, UPDATE, DELETE ON shared_episodic_memories, msm_cache_outbox, workspaces, semantic_facts
  TO msm_app;

ALTER TABLE shared_episodic_memories ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS msm_tenant ON shared_episodic_memories;
CREATE POLICY msm_tenant ON shared_episodic_memories
  USING (tenant_id = current_setting('msm.tenant', true))
  WITH CHECK (tenant_id = current_setting('msm.tenant', true));

ALTER TABLE msm_cache_outbox ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS msm_tenant ON msm_cache_outbox;
CREATE POLICY msm_tenant ON msm_cache_outbox
  USING (tenant_id = current_setting('msm.tenant', true))
  WITH CHECK (tenant_id = current_setting('msm.tenant', true));

ALTER TABLE workspaces ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS msm_tenant ON workspaces;
CREATE POLICY msm_tenant ON workspaces
  USING (tenant_id = current_setting('msm.tenant', true))
  WITH CHECK (tenant_id = current_setting('msm.tenant', true));

ALTER TABLE semantic_facts ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS msm_tenant ON semantic_facts;
CREATE POLICY msm_tenant ON semantic_facts
  USING (tenant_id = current_setting('msm.tenant', true))
  WITH CHECK (tenant_id = current_setting('msm.tenant', true));

ALTER TABLE api_tokens ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS msm_tenant ON api_tokens;
CREATE POLICY msm_tenant ON api_tokens
  USING (tenant_id = current_setting('msm.tenant', true))
  WITH CHECK (tenant_id = current_setting('msm.tenant', true));

ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS msm_tenant ON audit_log;
CREATE POLICY msm_tenant ON audit_log
  USING (tenant_id = current_setting('msm.tenant', true))
  WITH CHECK (tenant_id = current_setting('msm.tenant', true));
