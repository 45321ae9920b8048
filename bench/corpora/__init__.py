"""Retrieval corpora: events with known answers, generated deterministically (seeded, offline, no model).

A corpus is a list of events in write order (their timeline) and questions whose evidence is the exact
events that answer them. Generators describe events with tags and questions with the tags of their
evidence; ``CorpusBuilder`` orders the events, gives them keys and resolves the tags, so a question can
never point at an event that was not written.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["single-fact", "multi-event", "temporal", "identifier"]
KINDS: tuple[Kind, ...] = ("single-fact", "multi-event", "temporal", "identifier")


@dataclass(frozen=True)
class Doc:
    """One event as an agent writes it."""

    key: str
    scope: str
    agent_id: str
    agent_type: str
    content: str
    event_type: str = "observation"
    importance: float = 0.5
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Question:
    key: str
    scope: str
    text: str
    kind: Kind
    evidence: tuple[str, ...]  # keys of the docs that answer it


@dataclass(frozen=True)
class Corpus:
    name: str
    docs: list[Doc]  # in write order
    questions: list[Question]

    def describe(self) -> str:
        kinds = Counter(q.kind for q in self.questions)
        scopes = len({d.scope for d in self.docs})
        per_kind = ", ".join(f"{kinds[k]} {k}" for k in KINDS)
        return f"{len(self.docs)} events in {scopes} scopes, {len(self.questions)} questions ({per_kind})"


@dataclass
class _Pending:
    order: tuple[float, int]
    scope: str
    agent_id: str
    agent_type: str
    content: str
    event_type: str
    importance: float
    metadata: dict[str, Any]
    tag: str | None


class CorpusBuilder:
    """Collects events (at a point of their scope's timeline) and questions (by evidence tags)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._pending: list[_Pending] = []
        self._asked: list[tuple[str, str, Kind, tuple[str, ...]]] = []
        self._contents: set[tuple[str, str]] = set()

    def add(
        self,
        scope: str,
        when: float,
        agent_id: str,
        agent_type: str,
        content: str,
        *,
        event_type: str = "observation",
        importance: float = 0.5,
        metadata: dict[str, Any] | None = None,
        tag: str | None = None,
    ) -> bool:
        """Add an event at time ``when`` (any unit, ties keep insertion order). Content already written in
        the scope is refused (False): the package would deduplicate it."""
        if (scope, content) in self._contents:
            if tag is not None:
                raise ValueError(f"duplicate content for evidence {tag!r}: {content!r}")
            return False
        self._contents.add((scope, content))
        self._pending.append(
            _Pending(
                (when, len(self._pending)), scope, agent_id, agent_type, content, event_type,
                round(importance, 2), dict(metadata or {}), tag,
            )
        )  # fmt: skip
        return True

    def ask(self, scope: str, text: str, kind: Kind, *tags: str) -> None:
        if not tags:
            raise ValueError(f"question without evidence: {text!r}")
        self._asked.append((scope, text, kind, tags))

    def build(self) -> Corpus:
        ordered = sorted(self._pending, key=lambda p: p.order)
        docs: list[Doc] = []
        by_tag: dict[str, Doc] = {}
        for i, p in enumerate(ordered):
            doc = Doc(
                key=f"{self.name}-{i:05d}", scope=p.scope, agent_id=p.agent_id, agent_type=p.agent_type,
                content=p.content, event_type=p.event_type, importance=p.importance, metadata=p.metadata,
            )  # fmt: skip
            docs.append(doc)
            if p.tag is not None:
                if p.tag in by_tag:
                    raise ValueError(f"tag {p.tag!r} used twice")
                by_tag[p.tag] = doc
        questions = []
        for i, (scope, text, kind, tags) in enumerate(self._asked):
            missing = [t for t in tags if t not in by_tag]
            if missing:
                raise ValueError(f"question {text!r} cites unknown evidence {missing}")
            if any(by_tag[t].scope != scope for t in tags):
                raise ValueError(f"question {text!r} cites evidence outside its scope")
            evidence = tuple(dict.fromkeys(by_tag[t].key for t in tags))
            questions.append(Question(f"{self.name}-q{i:04d}", scope, text, kind, evidence))
        return Corpus(self.name, docs, questions)
