"""The server's per-connection limits: resources per listen stream and subscriptions per session (refused with
``LimitExceeded``), and the response size limit.

The response size limit (``MSM_MAX_RESPONSE_BYTES``) is one rule for every tool result and resource read: a
list that does not fit is cut to its first items that do (the caller marks it truncated and says how to ask
for the rest); anything else that does not fit is refused with ``ResultTooLarge``.

Sizes are measured as sent (JSON, text and structured content together) on the result that is returned, so
no escaping or rendering can push it over. Cutting a long list needs no full rendering: the items' own JSON
sizes give the first guess, and each measured attempt corrects it (one to three attempts in practice)."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import TypeVar

import pydantic_core

from ..errors import LimitExceeded, ResultTooLarge

T = TypeVar("T")
R = TypeVar("R")

# The JSON-RPC envelope around a result (jsonrpc, id, result and its keys), reserved from the limit.
ENVELOPE = 256
# A tool result carries each item twice (structured content and its rendering in the text).
FIRST_GUESS = 2.0
# Attempts guided by the measured ratio before halving instead.
GUIDED_ATTEMPTS = 6


def listen_uris(uris: Sequence[str], *, most: int) -> list[str]:
    """The distinct resources of one ``subscriptions/listen`` stream (``MSM_MAX_LISTEN_URIS`` at most)."""
    distinct = list(dict.fromkeys(uris))
    if len(distinct) > most:
        raise LimitExceeded(
            f"a listen stream may watch at most {most} resources, not {len(distinct)}: watch fewer (one "
            "scope's recent resource covers every event written in it)"
        )
    return distinct


def room_for_subscription(held: int, *, most: int) -> None:
    """A session holding ``held`` ``resources/subscribe`` subscriptions may add one (``MSM_MAX_SUBSCRIPTIONS``)."""
    if held >= most:
        raise LimitExceeded(
            f"this session already holds {held} subscriptions, the most it may: unsubscribe from resources it "
            "no longer needs first"
        )


def json_size(value: object) -> int:
    """Bytes of ``value`` as JSON (what a string, a model or a dict costs on the wire)."""
    return len(pydantic_core.to_json(value, fallback=str))


class ResponseBudget:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._room = max_bytes - ENVELOPE

    def check(self, size: int, what: str) -> None:
        """Refuse a whole (uncuttable) result of ``size`` bytes if it does not fit."""
        if size > self._room:
            raise ResultTooLarge(
                f"{what} would be {size} bytes, over the {self.max_bytes}-byte response limit "
                "(MSM_MAX_RESPONSE_BYTES): ask for less, or ask the operator to raise the limit"
            )

    def fit(self, items: Sequence[T], build: Callable[[Sequence[T]], R], size: Callable[[R], int], *, noun: str) -> R:
        """``build(items)`` if its ``size`` fits, else ``build`` of the longest prefix found to fit."""
        # Cumulative JSON sizes of the items, only as far as the first that alone pass the limit: no later
        # item can be kept (each is sent at least once), so none is measured.
        prefix: list[int] = []
        running = 0
        for item in items:
            running += json_size(item) + 1
            prefix.append(running)
            if running > self._room:
                break
        if running <= self._room:
            whole = build(items)
            measured = size(whole)
            if measured <= self._room:
                return whole
            self.check(measured if not items else 0, f"the {noun}")  # nothing to cut
            ratio = measured / running
        else:
            ratio = FIRST_GUESS
        count, attempts = len(items), 0
        while count > 1:
            attempts += 1
            guided = bisect_right(prefix, self._room / ratio)
            count = max(1, min(count - 1, guided if attempts <= GUIDED_ATTEMPTS else count // 2))
            cut = build(items[:count])
            measured = size(cut)
            if measured <= self._room:
                return self._grown(items, build, size, prefix, cut, count, measured)
            ratio = measured / prefix[count - 1]
        raise ResultTooLarge(
            f"even one of these {noun} is larger than the {self.max_bytes}-byte response limit "
            "(MSM_MAX_RESPONSE_BYTES): ask the operator to raise it"
        )

    def _grown(
        self,
        items: Sequence[T],
        build: Callable[[Sequence[T]], R],
        size: Callable[[R], int],
        prefix: list[int],
        cut: R,
        count: int,
        measured: int,
    ) -> R:
        """One more, longer attempt when the measured ratio says a first guess cut too much."""
        longer = min(len(items) - 1, bisect_right(prefix, self._room / (measured / prefix[count - 1])))
        if longer <= count:
            return cut
        attempt = build(items[:longer])
        return attempt if size(attempt) <= self._room else cut
