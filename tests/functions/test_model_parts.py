"""A stage builds only the parts of the bundle it uses, with the same answers as the full model."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import numpy as np
import orjson
import pytest
from fn_bundles import publish
from fn_stack import Tiny
from zerorec.api import RankingRequest, RecallRequest, RecallResponse, RerankRequest
from zerorec.bundle import LoadedBundle
from zerorec.coldstart import ALL_PARTS, DATA_ONLY, RANKING_PARTS, RECALL_PARTS, prefetch
from zerorec.errors import IntegrityError, InvalidInputError
from zerorec.online import (
    ItemStage,
    RankingStage,
    RecallStage,
    RerankStage,
    UserStage,
    decode_signals,
    encode_signals,
    load_model,
    stage_loader,
)
from zerorec.pipeline import CHANNEL_ORDER
from zerorec.serving import json_response
from zerorec.settings import Settings
from zerorec.storage.kv_memory import MemoryKVStore
from zerorec.storage.objects_local import LocalObjectStore


def test_data_only_model_answers_like_the_full_one(tiny: Tiny, tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    publish(store, "recommender", tiny.files)
    full = load_model(store, "recommender", parts=ALL_PARTS)
    data = load_model(store, "recommender", parts=DATA_ONLY)
    recall = load_model(store, "recommender", parts=RECALL_PARTS)
    assert data.rec.channels == {} and data.rec.scorer is None
    assert set(recall.rec.channels) == set(full.rec.channels) and recall.rec.scorer is None
    assert full.rec.scorer is not None
    assert data.version == full.version

    kv = MemoryKVStore()
    user = str(tiny.interactions.user_id.iloc[0])
    cands = RecallResponse.model_validate(RecallStage(full, kv).recall(RecallRequest(user_id=user, n=60)))
    assert cands == RecallResponse.model_validate(
        RecallStage(recall, kv).recall(RecallRequest(user_id=user, n=60))
    )
    items = [
        {"item_id": c.item_id, "score": 1 - k / 100, "channel": c.channel}
        for k, c in enumerate(cands.candidates)
    ]
    req = RerankRequest(user_id=user, items=items, n=10, seen=[items[0]["item_id"]])
    assert RerankStage(data).rerank(req) == RerankStage(full).rerank(req)
    assert UserStage(data, kv).profile(user) == UserStage(full, kv).profile(user)
    ids = [c.item_id for c in cands.candidates[:20]]
    assert ItemStage(data, kv).lookup(ids) == ItemStage(full, kv).lookup(ids)


class _CountingStore(LocalObjectStore):
    """A local store that records which keys were read."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: list[str] = []

    def get(self, key: str) -> bytes:
        self.reads.append(key)
        return super().get(key)


def test_a_stage_fetches_only_the_files_of_its_parts(tiny: Tiny, tmp_path: Path) -> None:
    store = _CountingStore(tmp_path)
    version = publish(store, "recommender", tiny.files)
    store.reads.clear()
    load_model(store, "recommender", parts=DATA_ONLY)
    fetched = {k.removeprefix(f"models/recommender/{version}/") for k in store.reads}
    assert not any(k.startswith("channels/") for k in fetched) and "ranker.onnx" not in fetched
    assert "manifest.json" in fetched and "meta.json" in fetched
    store.reads.clear()
    load_model(store, "recommender", parts=RECALL_PARTS)
    fetched = {k.removeprefix(f"models/recommender/{version}/") for k in store.reads}
    assert any(k.startswith("channels/ease/") for k in fetched) and "ranker.onnx" not in fetched


def test_the_first_load_takes_the_prefetched_bundle(tiny: Tiny, tmp_path: Path) -> None:
    """`coldstart.prefetch` downloads the configured model; the stage loader's first "latest" load
    builds from it, later loads fetch from the store as usual."""
    settings = Settings(data_dir=tmp_path, object_store="local", model_name="recommender")
    store = LocalObjectStore(settings.objects_dir)
    first = publish(store, "recommender", tiny.files, version="v1")
    bundle = prefetch(RECALL_PARTS, settings).result(timeout=60)
    assert bundle.version == first and "ranker.onnx" not in bundle.files
    assert any(k.startswith("channels/") for k in bundle.files)
    second = publish(store, "recommender", tiny.files, version="v2")

    done: Future[LoadedBundle] = Future()
    done.set_result(bundle)
    load = stage_loader(lambda m: m, settings, RECALL_PARTS, prefetched=done)
    got, model = load("latest")
    assert got == first and model.rec.scorer is None and model.rec.channels  # built from the prefetch
    assert load("latest")[0] == second  # afterwards: the store's LATEST

    failed: Future[LoadedBundle] = Future()
    failed.set_exception(IntegrityError("checksum mismatch"))
    load = stage_loader(lambda m: m, settings, RECALL_PARTS, prefetched=failed)
    with pytest.raises(IntegrityError):  # the prefetch's error is the first load's error ...
        load("latest")
    assert load("latest")[0] == second  # ... and the next load fetches afresh


def test_ranking_with_recall_signals_scores_like_the_full_model(tiny: Tiny, tmp_path: Path) -> None:
    """Ranking holds only the hot channel and the ranker; with recall's signals (over the JSON wire)
    its scores equal the full model's, which scores every channel itself."""
    store = LocalObjectStore(tmp_path)
    publish(store, "recommender", tiny.files)
    full = load_model(store, "recommender", parts=ALL_PARTS)
    ranking = load_model(store, "recommender", parts=RANKING_PARTS)
    assert set(ranking.rec.channels) == {"hot"} and ranking.rec.scorer is not None
    kv = MemoryKVStore()
    recall = RecallStage(load_model(store, "recommender", parts=RECALL_PARTS), kv)
    for user in tiny.interactions.user_id.astype(str).unique()[:10]:
        wire = json_response(recall.recall(RecallRequest(user_id=user, n=80))).body
        doc = orjson.loads(wire)
        assert doc["signal_channels"] and all(len(c["signals"]) == 64 for c in doc["candidates"])
        req = RankingRequest.model_validate(
            {"user_id": user, "candidates": doc["candidates"], "signal_channels": doc["signal_channels"]}
        )
        got = RankingStage(ranking, kv).score(req).scores
        rec = full.rec
        query = rec.query(user)
        merged = rec.candidates(query, 80, np.zeros(0, np.int64), fill=True)
        assert [c["item_id"] for c in doc["candidates"]] == rec.data.item_ids[merged.items].tolist()
        np.testing.assert_array_equal(np.asarray(got, np.float32), rec.rank(query, merged))

    # without signals the channels count as absent (still a score for every candidate); signals that
    # do not match signal_channels are refused
    bare = [{k: c[k] for k in ("item_id", "score", "channel")} for c in doc["candidates"]]
    req = RankingRequest.model_validate({"user_id": user, "candidates": bare})
    assert len(RankingStage(ranking, kv).score(req).scores) == len(bare)
    bad = RankingRequest.model_validate(
        {"user_id": user, "candidates": doc["candidates"], "signal_channels": doc["signal_channels"][:2]}
    )
    with pytest.raises(InvalidInputError, match="signals"):
        RankingStage(ranking, kv).score(bad)


def test_signals_round_trip_and_bad_signals_are_refused() -> None:
    sig = np.array([[[0.5, 3.0], [np.float32(0.1), 0.0]], [[-1.25, 7.0], [2.0, 1.0]]])
    wire = [{"item_id": f"i{k}", "signals": s} for k, s in enumerate(encode_signals(sig))]
    got = decode_signals(wire, ["als", "ease"])  # the model's order is ease, als, ...
    order = list(CHANNEL_ORDER)
    np.testing.assert_array_equal(got[:, order.index("als")], sig[:, 0].astype(np.float32))
    np.testing.assert_array_equal(got[:, order.index("ease")], sig[:, 1].astype(np.float32))
    assert np.isnan(got[:, order.index("hot")]).all()  # not sent: absent
    odd = encode_signals(np.array([[[np.inf, 1.0], [0.2, -4.0]]]))[0]
    got = decode_signals([{"item_id": "x", "signals": odd}], ["als", "ease"])
    assert np.isnan(got[0, order.index("als"), 0]) and np.isnan(got[0, order.index("ease")]).all()
    with pytest.raises(InvalidInputError, match="not base64"):
        decode_signals([{"item_id": "x", "signals": "!" * len(odd)}], ["als", "ease"])
    with pytest.raises(InvalidInputError, match="two float32 for each of the 3 signal_channels"):
        decode_signals([{"item_id": "x", "signals": odd}], ["als", "ease", "hot"])
    six = encode_signals(np.zeros((1, 6, 2)))[0]  # 48 bytes: the unpadded, decode-all-at-once path
    with pytest.raises(InvalidInputError, match="'y': signals is not base64"):
        decode_signals(
            [{"item_id": "x", "signals": six}, {"item_id": "y", "signals": "?" * 64}], CHANNEL_ORDER
        )


def test_a_bundle_of_more_users_than_max_users_serves_without_histories(tiny: Tiny, tmp_path: Path) -> None:
    """Above `max_users` recall and ranking hold no user-sized array: no user is known to the model,
    a user's history is what the request (or the KV) gives, and the answer for that history is the
    full model's answer for an unknown user with the same recent items."""
    import dataclasses

    store = LocalObjectStore(tmp_path)
    publish(store, "recommender", tiny.files)
    full = load_model(store, "recommender", parts=ALL_PARTS)
    lean_parts = dataclasses.replace(RECALL_PARTS, max_users=full.rec.data.n_users - 1)
    lean = load_model(store, "recommender", parts=lean_parts)
    assert lean.rec.data.n_users == 0 and lean.rec.data.user_index == {}
    assert lean.rec.data.times.shape == (0, full.rec.data.n_items)
    assert lean.rec.data.max_time() == full.rec.data.max_time()
    kv = MemoryKVStore()
    user = str(tiny.interactions.user_id.iloc[0])
    recent = [str(i) for i in tiny.history(user)[-5:]]
    got = RecallStage(lean, kv).recall(RecallRequest(user_id=user, n=60, recent_items=recent))
    want = RecallStage(full, kv).recall(RecallRequest(user_id="someone-new", n=60, recent_items=recent))
    assert [c["item_id"] for c in got["candidates"]] == [c["item_id"] for c in want["candidates"]]
    assert not set(recent) & {c["item_id"] for c in got["candidates"]}
