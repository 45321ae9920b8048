"""The one configuration object, read once from ``MSM_*`` environment variables (CLI flags override)."""

from __future__ import annotations

import getpass
import socket
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigError
from .validation import MAX_METADATA_BYTES

# Similarity floors differ per model: MiniLM's cosine scale is far lower than OpenAI's.
SEARCH_FLOOR_BY_MODEL = {
    "all-MiniLM-L6-v2": 0.25,
    "text-embedding-3-small": 0.35,
    "text-embedding-3-large": 0.35,
    "text-embedding-ada-002": 0.72,
}
DUPLICATE_FLOOR_BY_MODEL = {
    "all-MiniLM-L6-v2": 0.85,
    "text-embedding-3-small": 0.9,
    "text-embedding-3-large": 0.9,
    "text-embedding-ada-002": 0.95,
}
DEFAULT_SEARCH_FLOOR = 0.3
DEFAULT_DUPLICATE_FLOOR = 0.9


def _default_login() -> str:
    try:
        login = getpass.getuser()
    except (KeyError, OSError):
        login = "local"
    return "".join(c if c.isalnum() or c in "._-@" else "-" for c in login) or "local"


def _default_agent_id() -> str:
    host = socket.gethostname().split(".")[0] or "host"
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in f"agent-{host}")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MSM_", frozen=True, extra="ignore", populate_by_name=True)

    # backends (unset → embedded, zero-config)
    database_url: SecretStr | None = None
    # The tables' owner, for migrations and the cross-tenant jobs; requests are then served through
    # database_url as a role under row-level security (unset: database_url serves as msm_app, SET ROLE).
    database_owner_url: SecretStr | None = None
    redis_url: SecretStr | None = None
    qdrant_url: str | None = None
    qdrant_api_key: SecretStr | None = None
    data_dir: Path = Field(default_factory=lambda: Path(platformdirs.user_data_dir("mcp-shared-memory")))
    db_pool_min: int = Field(default=1, ge=0)
    # >= 2: consolidation holds a connection for its scope lock while storing facts on another.
    db_pool_max: int = Field(default=4, ge=2)
    redis_prefix: str = Field(default="msm", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    redis_timeout: float = Field(default=1.0, gt=0)
    # After a Redis failure, Redis is skipped this long (reads and writes go to PostgreSQL at once).
    redis_breaker_seconds: float = Field(default=2.0, ge=0)
    db_timeout: float = Field(default=10.0, gt=0)

    # embeddings
    embedding_provider: Literal["local", "openai"] = "local"
    embedding_model: str = "text-embedding-3-small"
    embedding_dimensions: int | None = Field(default=None, ge=1)
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("MSM_OPENAI_API_KEY", "OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("MSM_OPENAI_BASE_URL", "OPENAI_BASE_URL")
    )
    embedding_batch_size: int = Field(default=32, ge=1, le=2048)
    embedding_threads: int | None = Field(default=None, ge=1)
    # The local model runs in one embedding service per data dir, shared by every local process ("auto"),
    # or in each process ("off"). The service's own settings apply when a process starts it.
    embedding_service: Literal["auto", "off"] = "auto"
    embedding_service_model: Literal["all-MiniLM-L6-v2"] = "all-MiniLM-L6-v2"
    embedding_service_threads: int | None = Field(default=None, ge=1)  # unset: every core
    embedding_service_batch_size: int = Field(default=32, ge=1, le=2048)
    # How long a model batch that is not full waits for texts from other requests.
    embedding_service_batch_wait_ms: float = Field(default=0.0, ge=0, le=1000)
    # how long a search waits for the model: its query's vector, and its scope's events still waiting for one
    embedding_catch_up_seconds: float = Field(default=2.0, ge=0, le=60)

    # serving (CLI flags override)
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=1, le=65535)
    public_url: str | None = None  # external URL of the HTTP server, for OAuth metadata behind a proxy
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    log_format: Literal["text", "json"] = "text"  # json: one object per line, for log collectors
    # The bearer secret a Prometheus scraper sends to GET /metrics on HTTP; unset, /metrics is off (404).
    metrics_token: SecretStr | None = None
    # the live timeline page at /ui on HTTP (read-only, the same bearer tokens); false: no /ui routes
    ui: bool = True
    # HTTP Host / Origin values accepted besides loopback and the public URL's (comma-separated)
    allowed_hosts: str | None = None
    allowed_origins: str | None = None
    # failed bearer-token authentications accepted per client address and minute before 429
    auth_failures_per_minute: int = Field(default=30, ge=1)

    # stdio binding
    tenant: str = "default"
    agent_id: str = Field(default_factory=_default_agent_id)
    agent_type: str = "agent"
    scope: str | None = None
    allowed_scopes: str | None = None

    # behaviour
    recent_max: int = Field(default=100, ge=1, le=10_000)
    recent_ttl: int = Field(default=3600, ge=1)
    dedup_window: int = Field(default=30, ge=0)
    min_shared_importance: float = Field(default=0.6, ge=0, le=1)
    search_min_similarity: float | None = Field(default=None, ge=-1, le=1)
    # How hybrid search fuses the vector and full-text rankings: reciprocal rank, or weighted scores.
    search_fusion: Literal["rrf", "weighted"] = "weighted"
    # The full-text rank: PostgreSQL's ts_rank, or a BM25-style sum of the shared terms' IDF in the scope.
    search_lexical_rank: Literal["ts_rank", "idf"] = "idf"
    # Scopes with more events than this are searched by a binary-quantized first pass re-ranked exactly
    # (sql/013); smaller ones by an exact scan. None: always exact.
    search_quantize_above: int | None = Field(default=2000, ge=0)
    duplicate_fact_similarity: float | None = Field(default=None, ge=-1, le=1)
    max_content_chars: int = Field(default=32_000, ge=1)
    # Redaction before anything is stored, embedded, cached or published: secrets on by default, PII opt-in.
    redact_secrets: bool = True
    redact_pii: bool = False
    # The text block of tool results: a compact rendering for models ("text") or the JSON ("json").
    result_format: Literal["text", "json"] = "text"
    workspace_cache_ttl: int = Field(default=3600, ge=1)
    # The audit trail of every tool call, read, subscription and listen (never content); rows older than
    # the retention are deleted by the background maintenance.
    audit: bool = True
    audit_retention_days: int = Field(default=90, ge=1)
    # Events older than this many days are deleted in the background, per scope type (0: kept forever).
    retention_user_days: int = Field(default=0, ge=0)
    retention_workspace_days: int = Field(default=0, ge=0)

    # limits and quotas
    # No tool result or resource read is larger than this (its text and structured content together): a
    # list is cut to the items that fit and marked truncated; anything else that does not fit is refused.
    max_response_bytes: int = Field(default=1_048_576, ge=65_536)
    # A workspace's merged context, as JSON; at least what one context (patch) may hold.
    max_workspace_context_bytes: int = Field(default=65_536, ge=MAX_METADATA_BYTES)
    max_subscriptions: int = Field(default=100, ge=1)  # resources/subscribe per session
    max_listen_uris: int = Field(default=50, ge=1)  # resources per subscriptions/listen stream
    # Tool-call tokens per minute for each bearer token (HTTP) or agent (stdio), shared by every replica
    # through Redis: a read costs 1, a write 2. 0 turns the limit off.
    rate_limit_per_minute: int = Field(default=600, ge=0)
    rate_limit_burst: int = Field(default=120, ge=1)
    # Events a tenant's log may hold (unset: unlimited); writes beyond it are refused.
    tenant_quota_events: int | None = Field(default=None, ge=1)

    # consolidation of the episodic log into shared facts
    consolidation_interval: int = Field(default=300, ge=0)
    consolidation_min_importance: float = Field(default=0.7, ge=0, le=1)
    consolidation_event_types: str = "observation,decision,fact,finding,agent_result"
    consolidation_batch: int = Field(default=200, ge=1, le=10_000)
    consolidation_model: str | None = None

    @field_validator(
        "database_url",
        "database_owner_url",
        "redis_url",
        "qdrant_api_key",
        "openai_api_key",
        "metrics_token",
        "public_url",
        "tenant_quota_events",
        "search_quantize_above",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_format(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def embedding_model_id(self) -> str:
        return "all-MiniLM-L6-v2" if self.embedding_provider == "local" else self.embedding_model

    @property
    def search_floor(self) -> float:
        if self.search_min_similarity is not None:
            return self.search_min_similarity
        return SEARCH_FLOOR_BY_MODEL.get(self.embedding_model_id, DEFAULT_SEARCH_FLOOR)

    @property
    def duplicate_floor(self) -> float:
        if self.duplicate_fact_similarity is not None:
            return self.duplicate_fact_similarity
        return DUPLICATE_FLOOR_BY_MODEL.get(self.embedding_model_id, DEFAULT_DUPLICATE_FLOOR)

    @property
    def default_scope(self) -> str:
        return self.scope or f"user:{_default_login()}"

    def scope_patterns(self) -> tuple[str, ...]:
        """Scopes the stdio binding may use: the explicit list, else its own scope and every workspace."""
        if self.allowed_scopes:
            return tuple(p.strip() for p in self.allowed_scopes.split(",") if p.strip())
        return (self.default_scope, "workspace:*")

    def fact_event_types(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.consolidation_event_types.split(",") if t.strip())

    def require_openai_key(self) -> None:
        if self.embedding_provider == "openai" and not self.openai_api_key and not self.openai_base_url:
            raise ConfigError(
                "MSM_EMBEDDING_PROVIDER=openai needs OPENAI_API_KEY (or OPENAI_BASE_URL for a compatible "
                "server such as Ollama or vLLM); or set MSM_EMBEDDING_PROVIDER=local."
            )
