"""Which events a read keeps: agents, agent types, event types, a period, an importance, metadata values.
Applied inside the SQL before ranking or the limit, so filtered results stay complete."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from .errors import InvalidInput
from .models import validate_event_type, validate_identifier
from .validation import MAX_FILTER_METADATA_KEYS, MAX_FILTER_VALUES
from .validation import metadata as stored_metadata


class EventFilter(BaseModel):
    """Keep only some events (all conditions must hold); the limit then applies to what is kept."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    agent_ids: list[str] | None = Field(
        default=None, max_length=MAX_FILTER_VALUES, description="only events written by these agents"
    )
    agent_types: list[str] | None = Field(
        default=None, max_length=MAX_FILTER_VALUES, description="only events of these agent types"
    )
    event_types: list[str] | None = Field(
        default=None, max_length=MAX_FILTER_VALUES, description="e.g. ['decision', 'error']"
    )
    since: datetime | None = Field(default=None, description="only events written at or after this time")
    until: datetime | None = Field(default=None, description="only events written before this time")
    min_importance: float = Field(default=0.0, ge=0, le=1)
    metadata: dict[str, str | int | float | bool] | None = Field(
        default=None, description="only events whose metadata has these keys with these values"
    )

    @field_validator("agent_ids", "agent_types", "event_types")
    @classmethod
    def _bounded_identifiers(cls, values: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if values is None:
            return None
        if not values or len(values) > MAX_FILTER_VALUES:
            raise ValueError(f"{info.field_name} takes 1 to {MAX_FILTER_VALUES} values (omit it for all)")
        try:
            for value in values:
                if info.field_name == "event_types":
                    validate_event_type(value)
                else:
                    validate_identifier(value, str(info.field_name)[:-1].replace("_", " "))
        except InvalidInput as exc:
            raise ValueError(exc.message) from None
        return list(dict.fromkeys(values))

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and not 1 <= len(value) <= MAX_FILTER_METADATA_KEYS:
            raise ValueError(f"metadata takes 1 to {MAX_FILTER_METADATA_KEYS} keys (omit it for all)")
        try:
            return stored_metadata(value) if value is not None else None  # what PostgreSQL can compare
        except InvalidInput as exc:
            raise ValueError(exc.message) from None

    @model_validator(mode="after")
    def _ordered_time_range(self) -> EventFilter:
        for name in ("since", "until"):
            moment = getattr(self, name)
            if moment is None:
                continue
            if moment.tzinfo is None:
                raise ValueError(f"{name} needs a timezone, e.g. 2026-11-30T09:00:00Z")
            try:
                moment.astimezone(UTC)  # compared in UTC
            except OverflowError:
                raise ValueError(f"{name} is out of range: it must fall within the years 1 to 9999 in UTC") from None
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError("since must be before until")
        return self

    @property
    def is_empty(self) -> bool:
        return self == EventFilter()

    @classmethod
    def parse(cls, value: EventFilter | dict[str, Any] | None) -> EventFilter:
        """A filter from the Python API or a tool argument; every problem is an ``InvalidInput``."""
        if value is None:
            return cls()
        if isinstance(value, EventFilter):
            return value
        try:
            return cls.model_validate(value)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'filters'}: {str(e['msg']).removeprefix('Value error, ')}"
                for e in exc.errors()
            )
            raise InvalidInput(f"invalid filters ({problems})") from None
