"""Consolidation: unconsolidated events of a scope become shared facts, and are marked consolidated.

Offline by default: events at or above an importance threshold and of fact-like types become facts,
merged with near-duplicates. With ``MSM_CONSOLIDATION_MODEL`` set, an OpenAI-compatible chat model
extracts the facts instead. One process consolidates a scope at a time (PostgreSQL advisory lock).

Crash safety: every fact records the events it came from, and confirming a fact from events it
already records changes nothing; events are marked consolidated only after their facts are stored.
A crash midway therefore loses nothing, and a rerun finishes the work without duplicates.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .embeddings import Embedder
from .models import Scope, UnconsolidatedEvent
from .settings import Settings
from .stores.episodic import PostgresEpisodicStore
from .stores.facts import FactsStore
from .validation import MAX_FACT_CHARS
from .vectors import Vector

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    """A fact to store and the events it came from."""

    text: str
    events: list[UnconsolidatedEvent]
    vector: Vector | None = None


@dataclass
class ConsolidationReport:
    scopes: int = 0
    skipped_busy: int = 0
    events: int = 0
    stored: int = 0
    confirmed: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: ConsolidationReport) -> None:
        self.scopes += other.scopes
        self.skipped_busy += other.skipped_busy
        self.events += other.events
        self.stored += other.stored
        self.confirmed += other.confirmed
        self.errors += other.errors


class RuleExtractor:
    """Offline: an important event of a fact-like type is itself a fact."""

    def __init__(self, *, min_importance: float, event_types: frozenset[str]) -> None:
        self.min_importance = min_importance
        self.event_types = event_types

    async def extract(self, events: Sequence[UnconsolidatedEvent]) -> list[Candidate]:
        return [
            Candidate(text=e.content[:MAX_FACT_CHARS], events=[e], vector=e.embedding)
            for e in events
            if e.importance >= self.min_importance and e.event_type in self.event_types
        ]


EXTRACTION_PROMPT = """You consolidate the shared memory of a team of AI agents.
From the events below, extract durable facts worth remembering: self-contained statements (decisions,
findings, properties of systems, preferences). Skip chatter and transient steps. Answer with JSON only:
{"facts": [{"fact": "<one sentence>", "events": [<seq numbers it comes from>]}]}"""


class ChatExtractor:
    """An OpenAI-compatible chat model extracts the facts; falls back to the rules if it fails."""

    def __init__(self, client: object, *, model: str, fallback: RuleExtractor) -> None:
        self.client = client
        self.model = model
        self.fallback = fallback

    async def extract(self, events: Sequence[UnconsolidatedEvent]) -> list[Candidate]:
        if not events:
            return []
        listing = "\n".join(
            f"seq={e.seq} agent={e.agent_id} type={e.event_type} importance={e.importance:.2f}: {e.content[:2000]}"
            for e in events
        )
        try:
            response = await self.client.chat.completions.create(  # type: ignore[attr-defined]
                model=self.model,
                temperature=0,
                messages=[{"role": "system", "content": EXTRACTION_PROMPT}, {"role": "user", "content": listing}],
            )
            return self._parse(response.choices[0].message.content or "", events)
        except Exception as exc:  # any model/endpoint failure: consolidate offline rather than not at all
            log.warning("chat extraction failed (%s); using the offline rules", type(exc).__name__)
            return await self.fallback.extract(events)

    @staticmethod
    def _parse(text: str, events: Sequence[UnconsolidatedEvent]) -> list[Candidate]:
        start, end = text.find("{"), text.rfind("}")
        payload = json.loads(text[start : end + 1])
        by_seq = {e.seq: e for e in events}
        candidates = []
        for item in payload.get("facts", []):
            fact = str(item.get("fact", "")).strip()[:MAX_FACT_CHARS]
            sources = [by_seq[s] for s in item.get("events", []) if isinstance(s, int) and s in by_seq]
            if fact and sources:
                candidates.append(Candidate(text=fact, events=sources))
        return candidates


class Consolidator:
    def __init__(
        self,
        *,
        settings: Settings,
        episodic: PostgresEpisodicStore,
        facts: FactsStore,
        embedder: Embedder,
        extractor: RuleExtractor | ChatExtractor,
    ) -> None:
        self._settings = settings
        self._episodic = episodic
        self._facts = facts
        self._embedder = embedder
        self.extractor = extractor

    @staticmethod
    def extractor_for(settings: Settings) -> RuleExtractor | ChatExtractor:
        rules = RuleExtractor(
            min_importance=settings.consolidation_min_importance, event_types=settings.fact_event_types()
        )
        if not settings.consolidation_model:
            return rules
        import openai

        client = openai.AsyncOpenAI(
            api_key=settings.openai_api_key.get_secret_value() if settings.openai_api_key else "unused",
            base_url=settings.openai_base_url,
            timeout=60,
            max_retries=1,
        )
        return ChatExtractor(client, model=settings.consolidation_model, fallback=rules)

    def using(self, extractor: RuleExtractor | ChatExtractor) -> Consolidator:
        """The same consolidator with another extractor."""
        return Consolidator(
            settings=self._settings, episodic=self._episodic, facts=self._facts, embedder=self._embedder,
            extractor=extractor,
        )  # fmt: skip

    async def run(
        self,
        *,
        tenant: str | None = None,
        max_scopes: int = 1000,
        progress: Callable[[int, int], object] | None = None,
    ) -> ConsolidationReport:
        """Consolidate every scope with pending events (of one tenant, if given); ``progress(done, scopes)``
        after each scope."""
        report = ConsolidationReport()
        scopes = await self._episodic.unconsolidated_scopes(tenant=tenant, limit=max_scopes)
        for done, (scope_tenant, scope) in enumerate(scopes, start=1):
            report.add(await self.consolidate_scope(scope_tenant, scope))
            if progress is not None:
                progress(done, len(scopes))
        return report

    async def consolidate_scope(self, tenant: str, scope: Scope) -> ConsolidationReport:
        report = ConsolidationReport()
        async with self._episodic.consolidation_turn(tenant, scope) as ours:
            if not ours:
                report.skipped_busy = 1
                return report
            report.scopes = 1
            while events := await self._episodic.unconsolidated(
                tenant, scope, limit=self._settings.consolidation_batch, model_id=self._embedder.model_id
            ):
                await self._consolidate_batch(tenant, scope, events, report)
                await self._episodic.mark_consolidated([e.id for e in events])
                report.events += len(events)
        return report

    async def _consolidate_batch(
        self, tenant: str, scope: Scope, events: list[UnconsolidatedEvent], report: ConsolidationReport
    ) -> None:
        candidates = await self.extractor.extract(events)
        missing = [c for c in candidates if c.vector is None]
        if missing:
            vectors = await self._embedder.embed_many([c.text for c in missing])
            for candidate, vector in zip(missing, vectors, strict=True):
                candidate.vector = vector
        for candidate in candidates:
            assert candidate.vector is not None
            written = await self._facts.upsert(
                tenant, scope, candidate.text, candidate.vector,
                source_event_ids=[e.id for e in candidate.events],
                source_agents=sorted({e.agent_id for e in candidate.events}),
                duplicate_floor=self._settings.duplicate_floor,
            )  # fmt: skip
            if written.status == "stored":
                report.stored += 1
            else:
                report.confirmed += 1
