"""Deterministic, realistic agent-memory sentences (unique when asked), for writes, queries and topics."""

from __future__ import annotations

import itertools
import random

AGENTS = ["research", "code", "review", "planner", "ops", "support", "qa", "data"]
COMPONENTS = [
    "billing service", "auth gateway", "search index", "payment worker", "user profile API",
    "notification queue", "analytics pipeline", "CI runner", "mobile app", "feature flag store",
    "session cache", "email sender", "inventory database", "recommendation model", "rate limiter",
    "audit log", "image resizer", "checkout flow", "webhook dispatcher", "onboarding wizard",
]  # fmt: skip
FINDINGS = [
    "times out under load", "returns stale data after a deploy", "leaks memory on long sessions",
    "rejects valid OAuth2 PKCE tokens", "double-charges on retries", "drops events when Redis restarts",
    "is slow because of a missing index", "logs personal data in plain text", "ignores the locale setting",
    "crashes on empty input", "retries forever without backoff", "uses a deprecated TLS version",
]  # fmt: skip
ACTIONS = [
    "we should add a circuit breaker", "the fix is to pin the client version", "a migration adds the index",
    "the user prefers a rollback over a hotfix", "ops agreed to raise the pool size",
    "the test suite now covers it", "we decided to cache the result for five minutes",
    "the owner is the platform team", "this blocks the v2 release", "a feature flag hides it for now",
]  # fmt: skip
QUESTIONS = [
    "why does the {c} fail", "what did we decide about the {c}", "known problems with the {c}",
    "who owns the {c}", "how was the {c} fixed", "latency issues in the {c}",
]  # fmt: skip


class Sentences:
    """``next()`` yields a new sentence each call (a counter makes it unique); ``query()`` a question."""

    def __init__(self, seed: int = 5) -> None:
        self._rng = random.Random(seed)
        self._counter = itertools.count(1)

    def next(self, unique: bool = True) -> str:
        rng = self._rng
        agent, comp = rng.choice(AGENTS), rng.choice(COMPONENTS)
        text = f"The {agent} agent found that the {comp} {rng.choice(FINDINGS)}; {rng.choice(ACTIONS)}."
        return f"{text} (note {next(self._counter)})" if unique else text

    def batch(self, n: int) -> list[str]:
        return [self.next() for _ in range(n)]

    def query(self) -> str:
        return self._rng.choice(QUESTIONS).format(c=self._rng.choice(COMPONENTS))


def topic_sentence(i: int) -> str:
    """A topic sentence (no counter): the i-th combination of component, finding and action."""
    comp = COMPONENTS[i % len(COMPONENTS)]
    finding = FINDINGS[(i // len(COMPONENTS)) % len(FINDINGS)]
    action = ACTIONS[(i // (len(COMPONENTS) * len(FINDINGS))) % len(ACTIONS)]
    return f"The {comp} {finding}; {action}."
