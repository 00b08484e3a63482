"""Interactions, item metadata, loaders, the temporal split and the synthetic generator."""

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
