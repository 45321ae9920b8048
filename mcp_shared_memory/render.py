"""What a model reads from a tool result: a header saying what the list is and what to do next, then one line
per event or fact. Free text (content, a task, a context) is always a JSON string literal, so no content can
end its line and forge another. Pure functions: the caller passes ``now``."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from json.encoder import encode_basestring  # what json.dumps(str, ensure_ascii=False) calls, without its overhead
from typing import Any

from .models import Fact, ListedEvent, Workspace, WorkspaceSummary

# json.dumps escapes the C0 controls; these also end or reorder a line for some readers (str.splitlines,
# terminals, renderers): DEL and the C1 controls (NEL), the Unicode line/paragraph separators, bidi controls.
_UNSAFE = re.compile("[\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match[0]):04x}"


def quote(text: str) -> str:
    """``text`` as one JSON string literal on one line (still valid JSON: the extra escapes are JSON's own)."""
    return _UNSAFE.sub(_escape, encode_basestring(text))


def compact_json(value: Any) -> str:
    """A JSON value on one line, free text inside it escaped as in ``quote``."""
    return _UNSAFE.sub(_escape, json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str))


def age(moment: datetime, now: datetime) -> str:
    """How long ago, coarsely ("40s ago", "3m ago", "5h ago", "12d ago"); the date beyond 60 days."""
    seconds = max(0, int((now - moment).total_seconds()))
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60}m ago"
    if seconds < 86_400:
        return f"{seconds // 3600}h ago"
    if seconds < 60 * 86_400:
        return f"{seconds // 86_400}d ago"
    return moment.astimezone(UTC).date().isoformat()


def timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _num(value: float) -> str:
    """Two decimals at most and no leading zero (``.85``, ``1``, ``-.2``, ``12.5``): short, still unambiguous."""
    text = f"{round(value, 2) + 0.0:g}"  # + 0.0: no "-0"
    return text.replace("0.", ".", 1) if text.lstrip("-").startswith("0.") else text


def relevance(*, score: float | None, similarity: float | None, lexical: float | None) -> str:
    """Why a hit ranks where it does (``sim=.71 lex=.4``); the fused score only when it is all there is, since
    hits come best first anyway. Empty when not a search hit."""
    parts = [f"{name}={_num(value)}" for name, value in (("sim", similarity), ("lex", lexical)) if value is not None]
    if not parts and score is not None:
        parts.append(f"score={_num(score)}")
    return " ".join(parts)


def event_line(event: ListedEvent, *, now: datetime) -> str:
    """``#42 3m ago research-1 (research) decision imp=.8 sim=.71 lex=.4: "content"``"""
    why = relevance(score=event.score, similarity=event.similarity, lexical=event.lexical)
    return (
        f"#{event.seq} {age(event.created_at, now)} {event.agent_id} ({event.agent_type}) {event.event_type} "
        f"imp={_num(event.importance)}{' ' + why if why else ''}: {quote(event.content)}"
    )


def _listing(header: str, events: Sequence[ListedEvent], now: datetime) -> str:
    return "\n".join([header, *(event_line(e, now=now) for e in events)])


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def search_results(events: Sequence[ListedEvent], *, now: datetime, degraded: str | None = None) -> str:
    note = f"Note: {degraded}.\n" if degraded else ""
    if not events:
        return note + "No matching events. Try other words, or mode 'lexical' for exact ids and codes."
    return note + _listing(f"{_count(len(events), 'event')}, best first:", events, now)


def recent_events(
    events: Sequence[ListedEvent], *, now: datetime, since_seq: int | None, next_since_seq: int | None
) -> str:
    """The newest events (newest first), or those after ``since_seq`` (oldest first), and how to poll on."""
    cursor = next_since_seq if next_since_seq is not None else since_seq
    poll = f"; for newer ones pass since_seq={cursor}" if cursor is not None else ""
    if not events:
        after = f" after #{since_seq}" if since_seq is not None else ""
        return f"No events{after}{poll}."
    order = f" after #{since_seq}, oldest first" if since_seq is not None else ", newest first"
    return _listing(f"{_count(len(events), 'event')}{order} (now {timestamp(now)}){poll}:", events, now)


def agent_history(events: Sequence[ListedEvent], agent_id: str, *, now: datetime) -> str:
    if not events:
        return f"No events by {agent_id}."
    return _listing(f"{_count(len(events), 'event')} by {agent_id}, newest first (now {timestamp(now)}):", events, now)


def fact_line(fact: Fact, *, now: datetime) -> str:
    """``<id> 2d ago confirmed 3x by research-1,code-1 sim=.82: "fact"``; the id is what forget_fact takes."""
    why = relevance(score=fact.score, similarity=fact.similarity, lexical=fact.lexical)
    agents = f" by {','.join(fact.source_agents)}" if fact.source_agents else ""
    return (
        f"{fact.id} {age(fact.last_seen, now)} confirmed {fact.confirmations}x{agents}"
        f"{' ' + why if why else ''}: {quote(fact.fact)}"
    )


def facts(found: Sequence[Fact], *, now: datetime) -> str:
    if not found:
        return "No matching facts."
    lines = [f"{_count(len(found), 'fact')}, best first (the id is what forget_fact takes):"]
    return "\n".join([*lines, *(fact_line(f, now=now) for f in found)])


def _workspace_line(workspace: Workspace, *, now: datetime) -> str:
    agents = f", agents {', '.join(workspace.agents)}" if workspace.agents else ""
    return (
        f"Workspace {workspace.id} [{workspace.status}{agents}, created by {workspace.created_by} "
        f"{age(workspace.created_at, now)}]: {quote(workspace.task)}"
    )


def workspace_summary(summary: WorkspaceSummary, *, now: datetime) -> str:
    workspace = summary.workspace
    lines = [_workspace_line(workspace, now=now), f"Scope: workspace:{workspace.id}"]
    if workspace.context:
        lines.append(f"Context: {compact_json(workspace.context)}")
    shown, total = len(summary.recent_events), summary.event_count
    if not shown:
        lines.append(f"{_count(total, 'event')}.")
    else:
        which = "newest first" if shown >= total else f"the {shown} newest first"
        lines.append(f"{_count(total, 'event')} in total, {which} (now {timestamp(now)}):")
    lines += [event_line(e, now=now) for e in summary.recent_events]
    return "\n".join(lines)


def created_workspace(workspace: Workspace, *, scope: str, recent_uri: str, context_uri: str, now: datetime) -> str:
    """The new workspace and what to do next: the scope to pass, the resources to watch."""
    return "\n".join(
        [
            f"Created. {_workspace_line(workspace, now=now)}",
            f"Next: pass scope={quote(scope)} to write_event, search_shared and get_recent_shared.",
            f"Watch {recent_uri} (new events) and {context_uri} (task, status, context).",
        ]
    )
