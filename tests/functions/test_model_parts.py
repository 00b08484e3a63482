"""A stage builds only the parts of the bundle it uses, with the same answers as the full model."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import numpy as np
import orjson
import pytest
from fn_bundles import publish
from fn_stack import Tiny
from pydantic import ValidationError
from zerorec.api import CandidateColumns, RankingRequest, RecallRequest, RecallResponse, RerankRequest
from zerorec.bundle import LoadedBundle
from zerorec.coldstart import ALL_PARTS, DATA_ONLY, RANKING_PARTS, RECALL_PARTS, prefetch
from zerorec.columnar import BatchError, CandidateBatch, encode_signals
from zerorec.errors import IntegrityError
from zerorec.online import (
    ItemStage,
    RankingStage,
    RecallStage,
    RerankStage,
    SignalsVersionError,
    UserStage,
    load_model,
    stage_loader,
)
from zerorec.pipeline import CHANNEL_ORDER
from zerorec.ranking.features import read_service_features
from zerorec.realtime import feature_hash_writes, item_features_key
from zerorec.serving import json_response
from zerorec.settings import Settings
from zerorec.storage.kv_memory import MemoryKVStore
from zerorec.storage.objects_local import LocalObjectStore

NOW = 1_717_000_000.0  # the ranking stage's clock in the tests that compare it with the model


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
    def recalled(model: object) -> RecallResponse:
        body = json_response(RecallStage(model, kv).recall(RecallRequest(user_id=user, n=60))).body
        return RecallResponse.model_validate_json(body)

    cands = recalled(full)
    assert cands == recalled(recall)
    ranked = {
        "item_ids": cands.item_ids,
        "scores": [1 - k / 100 for k in range(len(cands.item_ids))],
        "channel": cands.channel,
        "channels": cands.channels,
    }
    req = RerankRequest.model_validate(
        {"user_id": user, "candidates": ranked, "n": 10, "seen": [cands.item_ids[0]]}
    )
    assert RerankStage(data).rerank(req) == RerankStage(full).rerank(req)
    assert UserStage(data, kv).profile(user) == UserStage(full, kv).profile(user)
    ids = cands.item_ids[:20]
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
    for n, item in enumerate(full.rec.data.item_ids.tolist()):  # feature-engineering's item windows
        kv.write(
            feature_hash_writes(
                item_features_key(item), {"cnt_1d": n % 3, "cnt_7d": n % 7, "cnt_30d": n % 11}
            )
        )
    recall = RecallStage(load_model(store, "recommender", parts=RECALL_PARTS), kv)
    for user in tiny.interactions.user_id.astype(str).unique()[:10]:
        wire = json_response(recall.recall(RecallRequest(user_id=user, n=80))).body
        doc = orjson.loads(wire)
        assert doc["channels"][: len(CHANNEL_ORDER)] == list(CHANNEL_ORDER)
        assert len(doc["signals"]) == 4 * -(-(len(doc["item_ids"]) * len(doc["channels"]) * 8) // 3)
        req = RankingRequest.model_validate_json(b'{"user_id":"%s","candidates":%s}' % (user.encode(), wire))
        got = RankingStage(ranking, kv, clock=lambda: NOW).score(req)["scores"]
        rec = full.rec
        query = rec.query(user)
        merged = rec.candidates(query, 80, np.zeros(0, np.int64), fill=True)
        ids = rec.data.item_ids[merged.items].tolist()
        assert doc["item_ids"] == ids
        cats = [rec.data.item_categories[i] for i in merged.items]
        service = read_service_features(kv, user, ids, cats, NOW)  # what the stage reads, same clock
        np.testing.assert_array_equal(np.asarray(got, np.float32), rec.rank(query, merged, service=service))

    # without signals the channels count as absent (still a score for every candidate)
    bare = {k: doc[k] for k in ("item_ids", "scores", "channel", "channels")}
    req = RankingRequest.model_validate({"user_id": user, "candidates": bare})
    assert len(RankingStage(ranking, kv).score(req)["scores"]) == len(bare["item_ids"])
    # signals of another model version (a rollout: recall is on the new model, ranking on the old)
    # are refused rather than read as this ranker's features
    other = RankingRequest.model_validate({"user_id": user, "candidates": {**doc, "model_version": "v-new"}})
    with pytest.raises(SignalsVersionError, match="v-new"):
        RankingStage(ranking, kv).score(other)
    unversioned = RankingRequest.model_validate(
        {"user_id": user, "candidates": {k: v for k, v in doc.items() if k != "model_version"}}
    )
    with pytest.raises(SignalsVersionError):
        RankingStage(ranking, kv).score(unversioned)


def _columns(m: int, channels: list[str], **over: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "item_ids": [f"i{k}" for k in range(m)],
        "scores": [1.0 - k / 10 for k in range(m)],
        "channel": [0] * m,
        "channels": channels,
    }
    return {**doc, **over}


def test_signals_round_trip_and_bad_batches_are_refused() -> None:
    sig = np.array([[[0.5, 3.0], [np.float32(0.1), 0.0]], [[-1.25, 7.0], [2.0, 1.0]]])
    cols = CandidateColumns.model_validate(_columns(2, ["als", "ease"], signals=encode_signals(sig)))
    got = CandidateBatch.from_columns(cols).signals_in(CHANNEL_ORDER)  # the model's order: ease, als, ...
    order = list(CHANNEL_ORDER)
    np.testing.assert_array_equal(got[:, order.index("als")], sig[:, 0].astype(np.float32))
    np.testing.assert_array_equal(got[:, order.index("ease")], sig[:, 1].astype(np.float32))
    assert np.isnan(got[:, order.index("hot")]).all()  # not sent: absent
    odd = encode_signals(np.array([[[np.inf, 1.0], [0.2, -4.0]]]))
    got = CandidateBatch.from_columns(
        CandidateColumns.model_validate(_columns(1, ["als", "ease"], signals=odd))
    ).signals_in(CHANNEL_ORDER)
    assert np.isnan(got[0, order.index("als"), 0]) and np.isnan(got[0, order.index("ease")]).all()
    with pytest.raises(BatchError, match="not base64"):
        CandidateBatch.from_columns(
            CandidateColumns.model_validate(_columns(1, ["als", "ease"], signals="!" * len(odd)))
        )
    bad_shapes = [
        (_columns(1, ["als", "ease", "hot"], signals=odd), "signals must be base64 of float32 \\[1 items, 3"),
        (_columns(2, ["als"], scores=[1.0]), "one entry per item"),
        (_columns(2, ["als"], channel=[0, 1]), "channel codes must be below"),
        (_columns(2, ["als"], found=[1, 2]), "found masks"),
        (_columns(2, ["als", "als"]), "distinct"),
        (_columns(1, ["als"], scores=[float("nan")]), "finite"),
        (_columns(1, ["als"], channel=[-1]), "greater than or equal to 0"),
    ]
    for doc, reason in bad_shapes:
        with pytest.raises(ValidationError, match=reason):
            CandidateColumns.model_validate(doc)


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
    assert got["item_ids"] == want["item_ids"]
    assert not set(recent) & set(got["item_ids"])


def test_the_compact_pipeline_answers_like_the_three_functions(tiny: Tiny, tmp_path: Path) -> None:
    """PipelineStage (recall, ranking and reranking in one process, no hops) gives the same items,
    scores and reasons as the per-service path: recall's batch as JSON to ranking, the batch sorted
    by the ranker's scores as JSON to reranking (what the BFF does)."""
    from zerorec.api import PipelineRequest
    from zerorec.online import PipelineStage

    store = LocalObjectStore(tmp_path)
    publish(store, "recommender", tiny.files)
    model = load_model(store, "recommender", parts=ALL_PARTS)
    kv = MemoryKVStore()
    recall, ranking, rerank = RecallStage(model, kv), RankingStage(model, kv), RerankStage(model)
    pipeline = PipelineStage(model, kv)
    for user in tiny.interactions.user_id.astype(str).unique()[:8]:
        wire = json_response(recall.recall(RecallRequest(user_id=user, n=60, exclude=["i3"]))).body
        req = RankingRequest.model_validate_json(b'{"user_id":"%s","candidates":%s}' % (user.encode(), wire))
        scores = np.asarray(orjson.loads(json_response(ranking.score(req)).body)["scores"])
        doc = orjson.loads(wire)
        order = np.argsort(-scores, kind="stable")
        ranked = {
            "item_ids": [doc["item_ids"][k] for k in order],
            "scores": scores[order].tolist(),
            "channel": [doc["channel"][k] for k in order],
            "channels": doc["channels"],
        }
        want = rerank.rerank(
            RerankRequest.model_validate({"user_id": user, "candidates": ranked, "n": 10, "seen": ["i3"]})
        ).items
        got = pipeline.recommend(PipelineRequest(user_id=user, n=10, candidates=60, exclude=["i3"])).items
        assert [(i.item_id, i.channel) for i in got] == [(i.item_id, i.channel) for i in want]
        assert [i.reasons for i in got] == [i.reasons for i in want]
        assert [i.score for i in got] == [i.score for i in want]
        assert "i3" not in {i.item_id for i in got}
