"""Interactions, item metadata, loaders, the temporal split and the synthetic generator.

The names load on first use (PEP 562): `zerorec.data.interactions` is what serving needs, and
importing it must not pull pandas in through the loaders, the split or the generator.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zerorec.data.interactions import InteractionData, normalize_interactions, normalize_items
    from zerorec.data.loaders import (
        load_dataset,
        load_interactions,
        load_items,
        load_movielens_100k,
        load_movielens_small,
        load_user_ids,
    )
    from zerorec.data.split import temporal_user_split
    from zerorec.data.synthetic import SyntheticConfig, generate

_WHERE = {
    "InteractionData": "interactions",
    "normalize_interactions": "interactions",
    "normalize_items": "interactions",
    "load_dataset": "loaders",
    "load_interactions": "loaders",
    "load_items": "loaders",
    "load_movielens_100k": "loaders",
    "load_movielens_small": "loaders",
    "load_user_ids": "loaders",
    "temporal_user_split": "split",
    "SyntheticConfig": "synthetic",
    "generate": "synthetic",
}

__all__ = [
    "InteractionData",
    "SyntheticConfig",
    "generate",
    "load_dataset",
    "load_interactions",
    "load_items",
    "load_movielens_100k",
    "load_movielens_small",
    "load_user_ids",
    "normalize_interactions",
    "normalize_items",
    "temporal_user_split",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
