"""DeepFM training, ONNX export and torch/onnxruntime parity."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from zerorec.errors import InvalidInputError  # noqa: E402
from zerorec.ranking.deepfm import DeepFM, DeepFMConfig, export_onnx, train_deepfm  # noqa: E402
from zerorec.ranking.metrics import log_loss, roc_auc  # noqa: E402
from zerorec.ranking.onnx_scorer import OnnxScorer  # noqa: E402

CARDS = [50, 30, 12, 12]
N_DENSE = 5
FAST = DeepFMConfig(epochs=2, batch_size=256, seed=7)


def random_batch(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sparse = np.stack([rng.integers(0, c, n) for c in CARDS], axis=1).astype(np.int64)
    # Raw dense features on very different scales: the model must normalise them itself.
    dense = (rng.normal(size=(n, N_DENSE)) * [1, 10, 100, 0.1, 5] + [0, 50, 1000, 3, -2]).astype(np.float32)
    labels = (rng.random(n) < 0.3).astype(np.float32)
    return sparse, dense, labels


@pytest.fixture(scope="module")
def trained() -> tuple[DeepFM, bytes]:
    s, d, y = random_batch(3000, 0)
    model = train_deepfm(s, d, y, CARDS, FAST, progress=False)
    buf = io.BytesIO()
    export_onnx(model, buf)
    return model, buf.getvalue()


def test_onnx_parity_within_1e4(trained: tuple[DeepFM, bytes]) -> None:
    model, onnx_bytes = trained
    scorer = OnnxScorer(onnx_bytes)
    for n, seed in ((1, 11), (7, 12), (500, 13)):  # dynamic batch axis
        s, d, _ = random_batch(n, seed)
        s[0, 0] = 0  # padding
        s[-1, 1] = CARDS[1] + 5  # out of vocabulary -> unknown (0)
        s[-1, 2] = -3
        expected = model.predict_proba(s, d)
        got = scorer.score(s, d)
        assert got.dtype == np.float32 and got.shape == (n,)
        assert np.abs(got - expected).max() < 1e-4
        assert np.all((got > 0) & (got < 1))


def test_out_of_vocabulary_scores_as_unknown(trained: tuple[DeepFM, bytes]) -> None:
    model, onnx_bytes = trained
    scorer = OnnxScorer(onnx_bytes)
    s, d, _ = random_batch(4, 21)
    unknown = s.copy()
    unknown[:, 0] = 0
    oov = s.copy()
    oov[:, 0] = [CARDS[0], 10**9, -1, CARDS[0] + 1]
    np.testing.assert_allclose(scorer.score(oov, d), scorer.score(unknown, d), atol=1e-7)
    np.testing.assert_allclose(model.predict_proba(oov, d), model.predict_proba(unknown, d), atol=1e-7)


def test_scorer_validates_inputs(trained: tuple[DeepFM, bytes]) -> None:
    scorer = OnnxScorer(trained[1], threads=1)
    s, d, _ = random_batch(3, 5)
    assert scorer.n_sparse == len(CARDS) and scorer.n_dense == N_DENSE
    bad = [
        (s.astype(np.float32), d),  # float indices
        (s, d.astype(str)),  # non-numeric dense
        (s[:, :2], d),  # wrong field count
        (s, d[:, :2]),  # wrong dense width
        (s[:2], d),  # row mismatch
        (s[0], d[0]),  # 1-D
    ]
    for bs, bd in bad:
        with pytest.raises(InvalidInputError):
            scorer.score(bs, bd)
    d_nan = d.copy()
    d_nan[0, 0] = np.nan
    with pytest.raises(InvalidInputError):
        scorer.score(s, d_nan)
    assert scorer.score(s[:0], d[:0]).shape == (0,)
    # int32 / float64 are accepted and converted.
    np.testing.assert_allclose(scorer.score(s.astype(np.int32), d.astype(np.float64)), scorer.score(s, d))


def test_export_to_path_and_metadata(trained: tuple[DeepFM, bytes], tmp_path: Path) -> None:
    model, _ = trained
    path = tmp_path / "ranker.onnx"
    export_onnx(model, path)
    scorer = OnnxScorer(path)
    assert json.loads(scorer.metadata["zerorec.cardinalities"]) == CARDS
    s, d, _ = random_batch(16, 3)
    assert np.abs(scorer.score(s, d) - model.predict_proba(s, d)).max() < 1e-4


def test_training_is_deterministic() -> None:
    s, d, y = random_batch(1500, 1)
    a = train_deepfm(s, d, y, CARDS, FAST, progress=False)
    b = train_deepfm(s, d, y, CARDS, FAST, progress=False)
    c = train_deepfm(s, d, y, CARDS, DeepFMConfig(epochs=2, batch_size=256, seed=8), progress=False)
    np.testing.assert_array_equal(a.predict_proba(s, d), b.predict_proba(s, d))
    assert not np.array_equal(a.predict_proba(s, d), c.predict_proba(s, d))


def test_early_stopping_keeps_best_epoch() -> None:
    s, d, y = random_batch(2000, 2)  # labels are noise: validation cannot keep improving
    vs, vd, vy = random_batch(1000, 3)
    cfg = DeepFMConfig(epochs=30, batch_size=256, patience=1, early_stopping="logloss")
    model = train_deepfm(s, d, y, CARDS, cfg, valid=(vs, vd, vy), progress=False)
    assert len(model.history) < 30
    best = min(model.history, key=lambda h: h["valid_logloss"])
    assert model.best_epoch == best["epoch"]
    assert log_loss(vy, model.predict_proba(vs, vd)) == pytest.approx(best["valid_logloss"], abs=1e-6)


def test_sample_weights_are_used() -> None:
    s, d, _ = random_batch(2000, 4)
    s[:, 0] = np.where(np.arange(2000) % 2 == 0, 1, 2)
    y = np.zeros(2000, np.float32)
    y[s[:, 0] == 1] = 1.0  # field 0 == 1 is always positive ...
    w = np.where(s[:, 0] == 1, 0.0, 1.0).astype(np.float32)  # ... but those rows weigh nothing
    cfg = DeepFMConfig(epochs=3, batch_size=128)
    weighted = train_deepfm(s, d, y, CARDS, cfg, progress=False, sample_weight=w)
    plain = train_deepfm(s, d, y, CARDS, cfg, progress=False)
    probe = s[s[:, 0] == 1][:50], d[s[:, 0] == 1][:50]
    assert weighted.predict_proba(*probe).mean() < 0.2 < 0.8 < plain.predict_proba(*probe).mean()


def test_shared_vocab_groups() -> None:
    cfg = DeepFMConfig(epochs=1, batch_size=256, shared_vocab_groups=((2, 3),))
    model = DeepFM(CARDS, N_DENSE, cfg)
    assert model.embedding.num_embeddings == 50 + 30 + 12  # the two genre slots share one table
    s, d, y = random_batch(800, 6)
    model = train_deepfm(s, d, y, CARDS, cfg, progress=False)
    # Index 5 of slot 2 and of slot 3 is the same row of the shared table.
    e = model.embedding.weight
    assert torch.equal(e[model.field_offset[2] + 5], e[model.field_offset[3] + 5])
    buf = io.BytesIO()
    export_onnx(model, buf)
    assert np.abs(OnnxScorer(buf.getvalue()).score(s, d) - model.predict_proba(s, d)).max() < 1e-4


def test_bad_training_input() -> None:
    s, d, y = random_batch(100, 9)
    with pytest.raises(InvalidInputError):
        train_deepfm(s, d, y, CARDS[:3], FAST, progress=False)  # cardinalities do not match
    s_bad = s.copy()
    s_bad[0, 1] = CARDS[1]
    with pytest.raises(InvalidInputError):
        train_deepfm(s_bad, d, y, CARDS, FAST, progress=False)  # index outside the vocabulary
    with pytest.raises(InvalidInputError):
        train_deepfm(s, d, y * 2, CARDS, FAST, progress=False)  # labels not 0/1
    with pytest.raises(InvalidInputError):
        train_deepfm(s, d, y[:50], CARDS, FAST, progress=False)


def _interaction_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label depends on a hidden user group x item group match (an interaction) plus one dense feature."""
    rng = np.random.default_rng(seed)
    n_users, n_items = 300, 200
    user_group = np.random.default_rng(123).integers(0, 4, n_users + 1)
    item_group = np.random.default_rng(456).integers(0, 4, n_items + 1)
    u = rng.integers(1, n_users + 1, n)
    i = rng.integers(1, n_items + 1, n)
    dense = rng.normal(size=(n, 3))
    logit = 3.0 * (user_group[u] == item_group[i]) - 1.5 + 0.5 * dense[:, 0]
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    return np.stack([u, i], axis=1), (dense * 3 + 10).astype(np.float32), y


def _logistic_auc(train: tuple, test: tuple) -> float:
    """Dense-only logistic regression (Newton steps), the baseline without sparse interactions."""
    x = np.c_[np.ones(len(train[1])), (train[1] - train[1].mean(0)) / train[1].std(0)]
    xt = np.c_[np.ones(len(test[1])), (test[1] - train[1].mean(0)) / train[1].std(0)]
    w = np.zeros(x.shape[1])
    for _ in range(25):
        p = 1.0 / (1.0 + np.exp(-x @ w))
        hess = x.T @ (x * (p * (1 - p))[:, None]) + 1e-6 * np.eye(x.shape[1])
        w -= np.linalg.solve(hess, x.T @ (p - train[2]))
    return roc_auc(test[2], xt @ w)


def test_deepfm_learns_feature_interaction() -> None:
    train, valid, test = _interaction_data(30000, 1), _interaction_data(5000, 2), _interaction_data(5000, 3)
    model = train_deepfm(
        *train, [301, 201], DeepFMConfig(epochs=8, batch_size=512, patience=3), valid=valid, progress=False
    )
    deep_auc = roc_auc(test[2], model.predict_proba(test[0], test[1]))
    base_auc = _logistic_auc(train, test)
    assert base_auc < 0.65
    assert deep_auc > base_auc + 0.1, (deep_auc, base_auc)


def test_serving_modules_do_not_import_torch(trained: tuple[DeepFM, bytes], tmp_path: Path) -> None:
    path = tmp_path / "ranker.onnx"
    path.write_bytes(trained[1])
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import zerorec.ranking
        from zerorec.ranking.onnx_scorer import OnnxScorer
        import zerorec.ranking.metrics
        import zerorec.rerank, zerorec.bundle
        scorer = OnnxScorer({str(path)!r})
        p = scorer.score(np.ones((3, {len(CARDS)}), np.int64), np.zeros((3, {N_DENSE}), np.float32))
        assert p.shape == (3,)
        bad = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        print("TORCH" if bad else "CLEAN", bad[:3])
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("CLEAN"), out.stdout
