"""The consumer's counts: applied, duplicate, dead-lettered and retried events, and the lag from an
event's time to its application. `ObservedApplier` wraps `zerorec.consumer.EventApplier` (same
methods), so the consumer function records them by building its applier through it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from zerorec.errors import BackendUnavailableError, InvalidInputError
from zerorec.observability.metrics import consumed


def event_lag_s(event: Any, now: float | None = None) -> float | None:
    """Seconds from the CloudEvent's `time` attribute to now; None when it has none (or a bad one)."""
    get = getattr(event, "get", None)  # a CloudEvent (or a mapping); None for an undecodable entry
    stamp = get("time") if callable(get) else None
    if not isinstance(stamp, str):
        return None
    try:
        at = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    if at.tzinfo is None:
        return None
    return (time.time() if now is None else now) - at.timestamp()


def _type(event: Any) -> str | None:
    if not callable(getattr(event, "get", None)):
        return None
    from zerorec.cloudevents_io import effective_type

    try:
        return effective_type(event)
    except Exception:  # a malformed event has no type worth a label
        return None


class ObservedApplier:
    """An EventApplier whose every answer is counted (see `zerorec.observability.metrics.consumed`)."""

    def __init__(self, applier: Any) -> None:
        self.inner = applier

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def apply(self, event: Any) -> Any:
        try:
            applied = self.inner.apply(event)
        except InvalidInputError:
            consumed(_type(event), "dead_lettered")
            raise
        except BackendUnavailableError:
            consumed(_type(event), "retry")
            raise
        except Exception:  # the function answers 500: the KafkaSource retries
            consumed(_type(event), "retry")
            raise
        outcome = "applied" if applied.applied else "duplicate"
        consumed(applied.event_type, outcome, event_lag_s(event) if applied.applied else None)
        return applied

    def apply_batch(self, events: Sequence[Any]) -> list[dict[str, Any]]:
        results = self.inner.apply_batch(events)
        now = time.time()
        for event, result in zip(events, results, strict=True):
            status = result.get("status")
            if status == 200:
                outcome = "applied" if result.get("applied") else "duplicate"
                consumed(
                    result.get("type"), outcome, event_lag_s(event, now) if outcome == "applied" else None
                )
            elif status == 400:
                consumed(_type(event), "dead_lettered")
            else:
                consumed(_type(event), "retry")
        return results


def refused_undecodable() -> None:
    """A request body that was no CloudEvent at all (400: dead-lettered without a type)."""
    consumed(None, "dead_lettered")
