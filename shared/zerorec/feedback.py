"""Feedback beyond "interacted": per-type weights, negative feedback, guests.

- Weights per behaviour kind (`ZEROREC_FEEDBACK_WEIGHTS`, e.g. `view=0.5,purchase=6`, over the
  defaults of `zerorec.realtime.EVENT_WEIGHTS`): the consumer's online state (category affinity,
  hot lists) and the training read of the exported event log weigh events with them.
- Negative kinds (`dislike`, `hide`): never a positive signal. The consumer keeps the item in the
  user's negative list (`realtime.NEGATIVE`, bounded); serving treats it as seen (never shown again)
  and recall demotes the item-CF neighbours of the user's newest negatives
  (`ZEROREC_NEGATIVE_NEIGHBOURS` of each, score times `ZEROREC_NEGATIVE_DEMOTION`): bounded work per
  request, whatever the catalogue size.
- Guests: a recommendation without a user id takes the session's `recent_items`; the downstream
  functions see the reserved id `GUEST_USER_ID`, which has no state of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from zerorec.errors import InvalidInputError

if TYPE_CHECKING:
    import numpy as np

NEGATIVE_KINDS = frozenset({"dislike", "hide"})
GUEST_USER_ID = "zerorec:guest"
NEGATIVE_QUERY_MAX = 20  # newest negatives whose neighbours one request demotes
DEMOTE = "demote"  # the candidate field recall sets and the BFF applies after ranking


def parse_weights(text: str, defaults: Mapping[str, float]) -> dict[str, float]:
    """`kind=weight,...` over `defaults`; InvalidInputError for an unknown kind or a bad weight."""
    weights = dict(defaults)
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        kind, sep, raw = part.partition("=")
        kind = kind.strip()
        if not sep or kind not in defaults:
            known = ", ".join(sorted(defaults))
            raise InvalidInputError(f"feedback weight {part!r}: want kind=weight with kind one of {known}")
        try:
            weight = float(raw)
        except ValueError:
            raise InvalidInputError(f"feedback weight {part!r}: {raw.strip()!r} is not a number") from None
        if not 0 <= weight <= 1000 or weight != weight:
            raise InvalidInputError(f"feedback weight {part!r}: want a number in [0, 1000]")
        weights[kind] = weight
    return weights


def configured_weights(settings: Any = None) -> dict[str, float]:
    """The weights of the settings (defaults: realtime.EVENT_WEIGHTS)."""
    from zerorec.realtime import EVENT_WEIGHTS
    from zerorec.settings import get_settings

    s = settings or get_settings()
    return parse_weights(s.feedback_weights, EVENT_WEIGHTS)


def training_weights(kinds: Sequence[str], weights: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """(keep mask, weight) per event of the exported log: negative kinds are left out of training
    (they are no interaction to learn from), the others weigh what their kind weighs."""
    import numpy as np  # not at import: the consumer imports this module and needs no numpy

    kinds_arr = np.asarray(kinds, dtype=object)
    keep = np.array([k not in NEGATIVE_KINDS for k in kinds_arr], dtype=bool)
    weight = np.array([weights.get(k, 1.0) for k in kinds_arr], dtype=np.float32)
    return keep, weight


def neighbours_of(
    item_index: Mapping[str, int],
    neighbours: np.ndarray | None,
    negatives: Sequence[str],
    per_item: int,
) -> np.ndarray:
    """Item indices of the `per_item` nearest item-CF neighbours of the newest negatives
    (NEGATIVE_QUERY_MAX of them): at most NEGATIVE_QUERY_MAX * per_item, whatever the catalogue."""
    import numpy as np

    if neighbours is None or per_item <= 0:
        return np.empty(0, dtype=np.int64)
    rows = [item_index[i] for i in negatives[:NEGATIVE_QUERY_MAX] if i in item_index]
    if not rows:
        return np.empty(0, dtype=np.int64)
    near = neighbours[np.asarray(rows), : max(1, per_item)].ravel()
    return np.unique(near[near >= 0]).astype(np.int64)


def mark_demoted(candidates: list[dict[str, Any]], demoted_ids: set[str], factor: float) -> int:
    """Set DEMOTE = `factor` on the candidates in `demoted_ids` (recall's wire dicts); how many."""
    count = 0
    for c in candidates:
        if c["item_id"] in demoted_ids:
            c[DEMOTE] = factor
            count += 1
    return count


def demoted_score(score: float, factor: Any) -> float:
    """A score pushed down by `factor` in (0, 1): scaled towards 0 when positive, away when negative
    (a ranker's logits may be negative). Anything else (absent, not a number) leaves it as it is."""
    if type(factor) not in (float, int) or not 0 < factor < 1:
        return score
    return score * factor if score >= 0 else score / max(factor, 1e-6)


def demote_near_negatives(candidates: list[dict[str, Any]], negatives: Sequence[str], rec: Any) -> int:
    """Mark recall's candidates that are item-CF neighbours of the user's negatives (`rec`: the
    serving Recommender) with DEMOTE; how many. No negatives, no item-CF channel: nothing to do."""
    if not negatives:
        return 0
    from zerorec.settings import get_settings

    s = get_settings()
    lists = getattr(rec.channels.get("itemcf"), "lists", None)
    near = neighbours_of(
        rec.data.item_index, getattr(lists, "neighbours", None), negatives, s.negative_neighbours
    )
    ids = {str(i) for i in rec.data.item_ids[near].tolist()} - set(negatives)
    return mark_demoted(candidates, ids, s.negative_demotion)
