"""Redaction before storage: the patterns alone, then what reaches PostgreSQL, Redis, search and facts."""

from __future__ import annotations

import numpy as np
import pytest

from mcp_shared_memory.memory import SharedMemory
from mcp_shared_memory.models import Principal, Scope
from mcp_shared_memory.redaction import REDACTED_KEY, Redactor, luhn_ok
from mcp_shared_memory.runtime import Connections, open_runtime
from mcp_shared_memory.settings import Settings

from .conftest import Backdoor, isolated
from .faults import eventually

pytestmark = pytest.mark.anyio

AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
DB_URL = "postgres://admin:hunter2-s3cret@db.internal:5432/app"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7V1\nq2Lw==\n-----END RSA PRIVATE KEY-----"

SECRETS = {
    "aws_key": (f"deploy with {AWS_KEY} today", "deploy with [REDACTED:aws_key] today"),
    "aws_secret": (
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "aws_secret_access_key = [REDACTED:aws_secret]",
    ),
    "openai_key": ("OPENAI_API_KEY=sk-proj-Ab3dEf6hIj9kLmN0pQrStUvWxYz12", "OPENAI_API_KEY=[REDACTED:openai_key]"),
    "openai_key_legacy": ("key sk-" + "a1B2c3D4e5" * 4 + "abcdefgh", "key [REDACTED:openai_key]"),
    "anthropic_key": ("sk-ant-api03-" + "xY9_" * 10 + "-AA", "[REDACTED:anthropic_key]"),
    "github_token": ("token ghp_" + "A1b2C3d4E5" * 3 + "f6G7h8", "token [REDACTED:github_token]"),
    "github_oauth": ("gho_" + "Z9" * 18, "[REDACTED:github_token]"),
    "github_pat": ("github_pat_11ABCDEFG0123456789_abcdefghijklmnop", "[REDACTED:github_token]"),
    "slack_token": ("bot xoxb-1234567890-0987654321-AbCdEfGh", "bot [REDACTED:slack_token]"),
    "google_api_key": ("maps AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW ok", "maps [REDACTED:google_api_key] ok"),
    "stripe_live": ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "[REDACTED:stripe_key]"),
    "stripe_restricted": ("rk_live_51H8abcdEFGHijklMNOP", "[REDACTED:stripe_key]"),
    "jwt": (f"cookie={JWT};", "cookie=[REDACTED:jwt];"),
    "private_key": (f"key:\n{PEM}\nthanks", "key:\n[REDACTED:private_key]\nthanks"),
    "private_key_truncated": ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1r", "[REDACTED:private_key]"),
    "url_password": (
        f"connect to {DB_URL}",
        "connect to postgres://admin:[REDACTED:url_password]@db.internal:5432/app",
    ),
    "url_password_no_user": ("redis://:pa55@cache:6379/0", "redis://:[REDACTED:url_password]@cache:6379/0"),
    "url_password_with_at": ("amqp://bob:p@ss@mq.local/", "amqp://bob:[REDACTED:url_password]@mq.local/"),
    "bearer_header": ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer [REDACTED:bearer_token]"),
    "bearer_alone": ("curl -H 'bearer 9f8e7d6c5b4a3f2e1d0c'", "curl -H 'bearer [REDACTED:bearer_token]'"),
    "basic_header": ("authorization: Basic dXNlcjpwYXNz", "authorization: Basic [REDACTED:auth_header]"),
}

ORDINARY = [
    "The billing service times out under load; we should add a circuit breaker.",
    "event 123e4567-e89b-12d3-a456-426614174000 was replayed",
    "fixed in commit 3f786850e387550fdab836ed7e6dc881de23001b (short 3f78685)",
    "upgrade numpy from 1.26.4 to 2.0.0rc1; python 3.11.7; v10.4.1-beta.2",
    "the task-management-system-refactoring-plan is ready",
    "risk-management and desk-scheduling are unrelated to sk-learn",
    "see http://localhost:8080/health and https://example.com/a@b (no password)",
    "ssh git@github.com and user@host are not URLs with passwords",
    "Bearer authentication is configured on the gateway",
    "order 4111111111111112 failed; ticket 1234567890123; ts 1732912345678",
    "Asia region AKIA rollout has no key in it",
    "ABCD1234 and DE12 are not IBANs; 2024-01-15 is a date; 10.0.0.1 an address",
    "-----BEGIN PUBLIC KEY----- is fine to share",
]


@pytest.mark.parametrize("case", list(SECRETS))
def test_each_secret_kind_is_replaced_by_its_tag(case: str) -> None:
    text, expected = SECRETS[case]
    found: set[str] = set()
    assert Redactor().text(text, found) == expected
    assert len(found) == 1


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_text_is_left_alone_even_with_pii_on(text: str) -> None:
    assert Redactor().text(text) == text
    found: set[str] = set()
    with_pii = Redactor(pii=True).text(text, found)
    # "git@github.com" is an e-mail address as far as the PII rules can tell; nothing else may change
    assert with_pii == text or (found == {"email"} and "git@" in text)


PII = {
    "email": ("write to jane.doe+ops@example.co.uk please", "write to [REDACTED:email] please"),
    "card_number": ("card 4111 1111 1111 1111 exp 12/29", "card [REDACTED:card_number] exp 12/29"),
    "card_dashes": ("amex 3782-822463-10005", "amex [REDACTED:card_number]"),
    "iban": ("IBAN DE89 3704 0044 0532 0130 00.", "IBAN [REDACTED:iban]."),
    "iban_compact": ("to GB82WEST12345698765432", "to [REDACTED:iban]"),
    "phone_international": ("call +44 20 7946 0958", "call [REDACTED:phone]"),
    "phone_us": ("(555) 123-4567 or 555-987-6543", "[REDACTED:phone] or [REDACTED:phone]"),
}


@pytest.mark.parametrize("case", list(PII))
def test_each_pii_kind_is_replaced_when_enabled_and_kept_by_default(case: str) -> None:
    text, expected = PII[case]
    assert Redactor(pii=True).text(text) == expected
    assert Redactor().text(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112",  # fails Luhn
        "IBAN DE89 3704 0044 0532 0130 01",  # fails mod-97
        "build 1234567890123456789 of 19 digits, version 5.4.3.2.1",
        "call ext. 4567 or room 555-1234",
    ],
)
def test_pii_look_alikes_that_fail_their_checks_are_kept(text: str) -> None:
    assert Redactor(pii=True).text(text) == text


def test_luhn() -> None:
    assert luhn_ok("4111111111111111") and luhn_ok("378282246310005")
    assert not luhn_ok("4111111111111112")


def test_disabled_redactor_changes_nothing() -> None:
    text = f"{AWS_KEY} {DB_URL} bob@example.com"
    assert Redactor(secrets=False, pii=False).text(text) == text


def test_metadata_values_are_redacted_recursively_and_the_kinds_recorded() -> None:
    content, metadata = Redactor().event(
        f"creds {AWS_KEY}",
        {"env": {"DATABASE_URL": DB_URL, "list": [JWT, 3, None]}, "n": 1, REDACTED_KEY: ["forged"]},
    )
    assert content == "creds [REDACTED:aws_key]"
    assert metadata == {
        "env": {
            "DATABASE_URL": "postgres://admin:[REDACTED:url_password]@db.internal:5432/app",
            "list": ["[REDACTED:jwt]", 3, None],
        },
        "n": 1,
        REDACTED_KEY: ["aws_key", "jwt", "url_password"],
    }


def test_clean_events_carry_no_redacted_key() -> None:
    assert Redactor().event("nothing secret", {"a": "b", REDACTED_KEY: ["forged"]}) == ("nothing secret", {"a": "b"})


# end to end


async def test_a_written_secret_never_reaches_postgres_redis_search_or_the_embedder(
    memory: SharedMemory, alice: Principal, backdoor: Backdoor
) -> None:
    content = f"deploy key {AWS_KEY} for {DB_URL} verified by the ops agent"
    written = await memory.write_event(
        alice, content, importance=0.9, metadata={"source": {"url": DB_URL}, "tags": ["deploy"]}
    )
    assert written.written and written.event is not None
    expected = "deploy key [REDACTED:aws_key] for postgres://admin:[REDACTED:url_password]@db.internal:5432/app"
    expected += " verified by the ops agent"
    assert written.event.content == expected
    assert written.event.metadata == {
        "source": {"url": "postgres://admin:[REDACTED:url_password]@db.internal:5432/app"},
        "tags": ["deploy"],
        REDACTED_KEY: ["aws_key", "url_password"],
    }

    query = "SELECT content, metadata::text AS metadata, embedding FROM shared_episodic_memories WHERE id=$1"
    # embedded just after the commit, by the embedding queue
    await eventually(lambda: backdoor.db.fetchval(f"SELECT embedding IS NOT NULL FROM ({query}) e", written.event_id))
    row = await backdoor.db.fetchrow(query, written.event_id)
    assert row is not None and row["content"] == expected
    assert "hunter2" not in row["metadata"] and AWS_KEY not in row["metadata"]
    assert np.allclose(np.asarray(row["embedding"]), await backdoor.embedder.embed(expected), atol=1e-5)

    raw = await backdoor.redis.zrange(backdoor.keys.recent(alice.tenant, Scope("user", "alice")), 0, -1)
    assert raw and not any(AWS_KEY in str(m) or "hunter2" in str(m) for m in raw)
    recent = await memory.get_recent_shared(alice)
    assert [e.content for e in recent] == [expected]
    assert recent[0].metadata[REDACTED_KEY] == ["aws_key", "url_password"]

    found = await memory.search_shared(alice, "deploy key ops agent")
    assert [e.content for e in found] == [expected]
    assert await memory.search_shared(alice, AWS_KEY, mode="lexical") == []


async def test_identical_secrets_still_deduplicate(memory: SharedMemory, alice: Principal) -> None:
    first = await memory.write_event(alice, f"token {AWS_KEY}")
    again = await memory.write_event(alice, f"token {AWS_KEY}")
    other = await memory.write_event(alice, "token AKIAABCDEFGHIJKLMNOP")  # same redacted text
    assert first.written
    assert again.status == "deduplicated" and again.event_id == first.event_id
    assert other.status == "deduplicated"


async def test_pii_is_kept_by_default_and_redacted_when_configured(
    settings: Settings, connections: Connections, memory: SharedMemory, alice: Principal
) -> None:
    text = "the user bob@example.com paid with 4111 1111 1111 1111"
    kept = await memory.write_event(alice, text)
    assert kept.event is not None and kept.event.content == text
    async with open_runtime(isolated(settings, redact_pii=True), connections=connections) as runtime:
        workspace = await runtime.memory.create_workspace(alice, "pii")
        written = await runtime.memory.write_event(alice, text, scope=f"workspace:{workspace.id}")
    assert written.event is not None
    assert written.event.content == "the user [REDACTED:email] paid with [REDACTED:card_number]"
    assert written.event.metadata[REDACTED_KEY] == ["card_number", "email"]


async def test_secret_redaction_can_be_switched_off(
    settings: Settings, connections: Connections, alice: Principal
) -> None:
    async with open_runtime(isolated(settings, redact_secrets=False), connections=connections) as runtime:
        written = await runtime.memory.write_event(alice, f"key {AWS_KEY}")
    assert written.event is not None and written.event.content == f"key {AWS_KEY}"


async def test_a_fact_with_a_secret_is_stored_redacted(
    memory: SharedMemory, alice: Principal, backdoor: Backdoor
) -> None:
    stored = await memory.store_fact(alice, f"The staging database is {DB_URL}")
    expected = "The staging database is postgres://admin:[REDACTED:url_password]@db.internal:5432/app"
    assert stored.fact.fact == expected
    in_db = await backdoor.db.fetchval("SELECT fact FROM semantic_facts WHERE id=$1", stored.fact.id)
    assert in_db == expected
    assert [f.fact for f in await memory.search_facts(alice, "staging database")] == [expected]


async def test_workspace_task_and_context_are_redacted(memory: SharedMemory, alice: Principal) -> None:
    key = "AKIA" + "QWERTYUIOPASDFGH"
    workspace = await memory.create_workspace(alice, f"Rotate {key} today", context={"creds": f"key {key}"})
    updated = await memory.update_workspace(alice, workspace.id, context={"note": f"old key was {key}"})
    for text in (workspace.task, str(workspace.context), str(updated.context)):
        assert key not in text and "[REDACTED:" in text
