"""A tiny recommender bundle trained on the synthetic generator (C's training API), for the tests."""

from __future__ import annotations

from typing import Any

import pandas as pd
from zerorec.bundle import publish_bundle
from zerorec.data.synthetic import SyntheticConfig, generate
from zerorec.pipeline import PipelineConfig, Recommender, train_recommender
from zerorec.storage import ObjectStore

TINY_DATA = SyntheticConfig(n_users=120, n_items=300, mean_interactions=15)
TINY_PIPELINE = PipelineConfig(
    als_factors=8,
    als_iterations=3,
    ranker_epochs=1,
    ranker_threads=1,
    n_candidates=100,
    quotas={"ease": 40, "itemcf": 20, "als": 15, "vector": 10, "hot": 10, "fresh": 5},
    # Pure relevance order, so tests can tell what reranking's seen filter did on its own.
    rerank_diversity=0.0,
    rerank_freshness=0.0,
)


def train_tiny() -> tuple[Recommender, dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """(recommender, info, interactions, items): a few seconds of training."""
    interactions, items = generate(TINY_DATA)
    rec, info = train_recommender(interactions, items, TINY_PIPELINE)
    return rec, info, interactions, items


def publish(store: ObjectStore, name: str, files: dict[str, bytes], version: str | None = None) -> str:
    """Publish `files` as a bundle of `name` (as `zerorec train` does) and move LATEST to it."""
    return publish_bundle(store, name, files, params={"tiny": True}, version=version)
