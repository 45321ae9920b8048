"""The typed tool results, and the one place they become ``CallToolResult``s: structured content beside a
compact rendering for the model (or the same JSON), sized by the response limit (``limits.py``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Literal, TypeVar

from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel, Field

from ..models import Fact, ListedEvent, Workspace, WorkspaceSummary
from ..settings import Settings
from .limits import ResponseBudget, json_size

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T", bound=BaseModel)

TRUNCATED = "true when the list was cut to fit the response size limit: ask for fewer or narrow the request"


class WriteEventResult(BaseModel):
    status: Literal["written", "deduplicated", "replayed"]
    event_id: str | None
    seq: int | None
    scope: str
    original_agent_id: str | None = Field(
        default=None, description="deduplicated: the agent whose write of the same content was kept"
    )


class EventList(BaseModel):
    scope: str = Field(description="the scope every listed event is in")
    events: Sequence[ListedEvent]
    next_since_seq: int | None = Field(
        default=None, description="pass as since_seq to get what was written after these"
    )
    truncated: bool = Field(default=False, description=TRUNCATED)
    degraded: str | None = Field(
        default=None, description="what the search had to rank without (e.g. the embedding model being down)"
    )


class CreatedWorkspace(Workspace):
    scope: str = Field(description="pass as scope to write_event, search_shared, get_recent_shared")
    recent_uri: str = Field(description="resource to watch for the workspace's new events")
    context_uri: str = Field(description="resource to watch for its task, status and context")


class FactList(BaseModel):
    facts: list[Fact]
    truncated: bool = Field(default=False, description=TRUNCATED)


class SummaryResult(WorkspaceSummary):
    truncated: bool = Field(default=False, description=TRUNCATED)


class StoreFactResult(BaseModel):
    status: Literal["stored", "confirmed"]
    fact: Fact


class Forgotten(BaseModel):
    forgotten: str


class ToolResults:
    def __init__(self, settings: Settings) -> None:
        self.compact_text = settings.result_format == "text"
        self.budget = ResponseBudget(settings.max_response_bytes)

    def one(self, structured: BaseModel, text: Callable[[datetime], str] | None = None) -> CallToolResult:
        """A whole result: refused (``ResultTooLarge``) if over the response limit. ``text``: the rendering
        for the model (default: the JSON)."""
        body = text(datetime.now(UTC)) if self.compact_text and text else _json_text(structured)
        answered = _result(structured, body)
        self.budget.check(_size(answered), "this result")
        return answered

    def listing(
        self,
        items: Sequence[T],
        record: Callable[[list[T], bool], M],
        text: Callable[[M, datetime], str],
        *,
        hint: str,
        noun: str = "events",
    ) -> CallToolResult:
        """A list result (``record(kept, truncated)``), cut to its first items that fit the response limit,
        marked truncated, and its rendering prefaced by a note saying how to ask for the rest (``hint``)."""
        now = datetime.now(UTC)

        def build(kept: Sequence[T]) -> CallToolResult:
            cut = len(kept) < len(items)
            structured = record(list(kept), cut)
            if not self.compact_text:
                return _result(structured, _json_text(structured))
            body = text(structured, now)
            if cut:
                body = (
                    f"Truncated to the first {len(kept)} of {len(items)} {noun} by the response size limit "
                    f"({self.budget.max_bytes} bytes): {hint}.\n{body}"
                )
            return _result(structured, body)

        return self.budget.fit(items, build, _size, noun=noun)


def _json_text(structured: BaseModel) -> str:
    return structured.model_dump_json(indent=2, exclude_defaults=True)


def _result(structured: BaseModel, body: str) -> CallToolResult:
    # Fields at their defaults (no role, empty metadata, no scores outside a search) are left out: the
    # client parses and validates less, and the output schema marks them optional.
    return CallToolResult(
        content=[TextContent(type="text", text=body)],
        structured_content=structured.model_dump(mode="json", exclude_defaults=True),
    )


def _size(answered: CallToolResult) -> int:
    """Bytes of the result as sent: its text and its structured content, as JSON."""
    text = answered.content[0]
    assert isinstance(text, TextContent)
    return json_size(text.text) + json_size(answered.structured_content)
