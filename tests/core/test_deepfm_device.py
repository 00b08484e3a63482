"""DeepFM trains on the device asked for (the Spark engine's --device) and returns on the CPU."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from zerorec.errors import InvalidInputError  # noqa: E402
from zerorec.ranking.deepfm import DeepFMConfig, default_device, train_deepfm  # noqa: E402


def _rows(n: int = 600) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    sparse = rng.integers(1, 10, size=(n, 3)).astype(np.int64)
    dense = rng.normal(size=(n, 4)).astype(np.float32)
    labels = (dense[:, 0] + 0.5 * (sparse[:, 0] > 5) > 0.3).astype(np.float32)
    return sparse, dense, labels


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: torch.cuda.is_available() is False"
)
def test_deepfm_trains_on_cuda_and_scores_like_on_cpu():
    s, d, y = _rows()
    cfg = DeepFMConfig(embed_dim=4, hidden=(8,), epochs=3, seed=1)
    with default_device("cuda"):
        model = train_deepfm(s, d, y, [10, 10, 10], cfg, progress=False)
    assert next(model.parameters()).device.type == "cpu"  # ready for ONNX export
    probs = model.predict_proba(s, d)
    assert probs.shape == (len(y),) and np.isfinite(probs).all()
    from zerorec.ranking.metrics import roc_auc

    assert roc_auc(y, probs) > 0.7


def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch):
    from zerorec.training.spark import train_ranker_on

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InvalidInputError, match="no CUDA device"):
        train_ranker_on(None, None, None, "cuda", lambda *a: None)


def test_cpu_device_context_trains_as_before():
    s, d, y = _rows()
    cfg = DeepFMConfig(embed_dim=4, hidden=(8,), epochs=2, seed=1)
    plain = train_deepfm(s, d, y, [10, 10, 10], cfg, progress=False).predict_proba(s, d)
    with default_device("cpu"):
        again = train_deepfm(s, d, y, [10, 10, 10], cfg, progress=False).predict_proba(s, d)
    assert np.allclose(plain, again)
