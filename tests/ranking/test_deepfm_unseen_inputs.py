"""Inputs training never saw do not move the served score; an ensemble exports as one ONNX graph."""

from __future__ import annotations

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from zerorec.ranking.deepfm import DeepFMConfig, DeepFMEnsemble, export_onnx, train_deepfm  # noqa: E402
from zerorec.ranking.onnx_scorer import OnnxScorer  # noqa: E402


def _data(seed: int = 0, n: int = 600) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    item = rng.integers(1, 20, n)
    device = np.ones(n, np.int64)  # training only ever saw device index 1
    sparse = np.column_stack([item, device])
    dense = np.column_stack([rng.normal(size=n), np.zeros(n)]).astype(np.float32)  # column 1 constant
    labels = (rng.random(n) < 0.2 + 0.5 * (item % 2)).astype(np.float32)
    return sparse, dense, labels


def test_unseen_index_and_constant_column_score_as_unknown() -> None:
    sparse, dense, labels = _data()
    cfg = DeepFMConfig(embed_dim=4, hidden=(8,), epochs=2, batch_size=128)
    model = train_deepfm(sparse, dense, labels, [20, 4], cfg, progress=False)
    probe_s = sparse[:50].copy()
    probe_d = dense[:50].copy()
    base = model.predict_proba(np.column_stack([probe_s[:, 0], np.zeros(50, np.int64)]), probe_d)
    unseen = model.predict_proba(np.column_stack([probe_s[:, 0], np.full(50, 3)]), probe_d)
    np.testing.assert_allclose(unseen, base, rtol=1e-6)  # index 3 never trained: as unknown (0)
    shifted = probe_d.copy()
    shifted[:, 1] = 7.0  # a value the constant column never had in training
    np.testing.assert_allclose(
        model.predict_proba(probe_s, shifted), model.predict_proba(probe_s, probe_d), rtol=1e-6
    )
    seen = model.predict_proba(probe_s, probe_d)  # index 1 was trained: it does move the score
    assert not np.allclose(seen, base)


def test_ensemble_onnx_matches_torch() -> None:
    sparse, dense, labels = _data(1)
    members = [
        train_deepfm(
            sparse,
            dense,
            labels,
            [20, 4],
            DeepFMConfig(embed_dim=4, hidden=(8,), epochs=1, seed=s),
            progress=False,
        )
        for s in (0, 1)
    ]
    ens = DeepFMEnsemble(members)
    buf = io.BytesIO()
    export_onnx(ens, buf)
    scorer = OnnxScorer(buf.getvalue())
    got = scorer.score(sparse[:100], dense[:100])
    np.testing.assert_allclose(got, ens.predict_proba(sparse[:100], dense[:100]), rtol=1e-4, atol=1e-6)
    single = members[0].predict_proba(sparse[:100], dense[:100])
    assert not np.allclose(got, single)  # the graph averages the members, not the first alone
