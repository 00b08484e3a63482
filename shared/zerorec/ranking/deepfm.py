"""DeepFM ranker in PyTorch (training only) and its ONNX export.

Inputs: `sparse` int64 [N, F] (field f holds an index into its own vocabulary of size
`cardinalities[f]`; 0 = padding/unknown, which has a zero embedding and zero weight) and `dense`
float32 [N, D] raw values (mean/std normalisation is stored in the model as buffers, so the ONNX
graph takes raw features too). Out-of-vocabulary indices (< 0 or >= cardinality) are mapped to 0
inside the model, so neither torch nor onnxruntime can crash on them.

Model: logit = bias + first order (per-index weights + linear over dense)
             + FM second order over F + D field vectors
             + MLP over [flattened sparse embeddings, normalised dense].
Dense features enter the FM as their own learned vectors scaled by the normalised value
(the classic FM treatment of numeric fields): each dense feature can then interact pairwise with
every sparse field (e.g. "channel score x item genre"), at D*k parameters and no extra layer.

`shared_vocab_groups` lets several fields (e.g. genre slots 1..3) share one embedding table.
Never pickled: publish the ONNX bytes from `export_onnx` with `zerorec.bundle`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from zerorec.errors import InvalidInputError
from zerorec.ranking.metrics import log_loss, roc_auc

ONNX_INPUTS = ("sparse", "dense")
ONNX_OUTPUT = "prob"
ONNX_OPSET = 17
# The torch device `train_deepfm` trains on (the Spark engine's --device); the model returns on CPU.
_DEVICE: ContextVar[str] = ContextVar("zerorec_deepfm_device", default="cpu")


@contextlib.contextmanager
def default_device(device: str) -> Iterator[None]:
    """Train on `device` (e.g. "cuda") inside the block."""
    token = _DEVICE.set(device)
    try:
        yield
    finally:
        _DEVICE.reset(token)


@dataclass(frozen=True)
class DeepFMConfig:
    """Hyper-parameters of DeepFM and its training loop."""

    embed_dim: int = 16
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.1
    lr: float = 3e-3
    weight_decay: float = 1e-6
    epochs: int = 10
    batch_size: int = 1024
    seed: int = 0
    early_stopping: Literal["auc", "logloss"] = "auc"
    patience: int = 2
    threads: int = 1  # the model is small: a 2nd thread only pays off on an idle machine
    shared_vocab_groups: tuple[tuple[int, ...], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.embed_dim < 1 or self.batch_size < 1 or self.epochs < 1 or self.patience < 1:
            raise InvalidInputError("embed_dim, batch_size, epochs and patience must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidInputError(f"dropout must be in [0, 1), got {self.dropout}")
        if any(h < 1 for h in self.hidden):
            raise InvalidInputError(f"hidden sizes must be >= 1, got {self.hidden}")
        if self.early_stopping not in ("auc", "logloss"):
            raise InvalidInputError(f"early_stopping must be 'auc' or 'logloss', got {self.early_stopping!r}")


def _table_layout(
    cardinalities: Sequence[int], groups: Sequence[Sequence[int]]
) -> tuple[list[int], list[int], int]:
    """Map fields to tables: returns per-field table offset, per-field vocabulary size, total rows."""
    n_fields = len(cardinalities)
    table_of = list(range(n_fields))
    seen: set[int] = set()
    for group in groups:
        members = sorted(set(group))
        if not members or any(not 0 <= f < n_fields for f in members) or seen & set(members):
            raise InvalidInputError(f"bad shared_vocab_groups {groups!r} for {n_fields} fields")
        seen.update(members)
        for f in members:
            table_of[f] = members[0]
    table_size = {t: 0 for t in set(table_of)}
    for f, t in enumerate(table_of):
        table_size[t] = max(table_size[t], int(cardinalities[f]))
    table_offset: dict[int, int] = {}
    total = 0
    for t in sorted(table_size):
        table_offset[t] = total
        total += table_size[t]
    return (
        [table_offset[table_of[f]] for f in range(n_fields)],
        [table_size[table_of[f]] for f in range(n_fields)],
        total,
    )


class DeepFM(nn.Module):
    """DeepFM over F sparse fields and D dense features; `forward` returns logits [N]."""

    def __init__(
        self,
        cardinalities: Sequence[int],
        n_dense: int,
        config: DeepFMConfig = DeepFMConfig(),
        dense_mean: np.ndarray | None = None,
        dense_std: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        if len(cardinalities) < 1 or any(int(c) < 1 for c in cardinalities):
            raise InvalidInputError(
                f"need >= 1 sparse field with cardinality >= 1, got {list(cardinalities)}"
            )
        if n_dense < 0:
            raise InvalidInputError(f"n_dense must be >= 0, got {n_dense}")
        self.config = config
        self.cardinalities = [int(c) for c in cardinalities]
        self.n_sparse = len(self.cardinalities)
        self.n_dense = int(n_dense)
        offsets, sizes, total = _table_layout(self.cardinalities, config.shared_vocab_groups)
        k = config.embed_dim
        self.register_buffer("field_offset", torch.tensor(offsets, dtype=torch.int64))
        # A field only accepts indices of its own vocabulary, even inside a larger shared table.
        self.register_buffer("field_card", torch.tensor(self.cardinalities, dtype=torch.int64))
        mean = (
            np.zeros(self.n_dense, np.float32) if dense_mean is None else np.asarray(dense_mean, np.float32)
        )
        std = np.ones(self.n_dense, np.float32) if dense_std is None else np.asarray(dense_std, np.float32)
        self.register_buffer("dense_mean", torch.from_numpy(mean.copy()))
        self.register_buffer("dense_std", torch.from_numpy(np.maximum(std, 1e-6).copy()))
        self.table_sizes = sizes
        self.history: list[dict[str, float]] = []  # filled by train_deepfm, one row per epoch
        self.best_epoch: int | None = None
        self.embedding = nn.Embedding(total, k)
        self.weight = nn.Embedding(total, 1)
        self.dense_vectors = nn.Parameter(torch.empty(self.n_dense, k))
        self.dense_linear = nn.Parameter(torch.zeros(self.n_dense))
        self.bias = nn.Parameter(torch.zeros(()))
        layers: list[nn.Module] = []
        width = self.n_sparse * k + self.n_dense
        for h in config.hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(config.dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        nn.init.normal_(self.embedding.weight, std=0.05)
        nn.init.zeros_(self.weight.weight)
        nn.init.normal_(self.dense_vectors, std=0.01)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """Logits [N] for int64 `sparse` [N, F] and raw float32 `dense` [N, D]."""
        valid = (sparse > 0) & (sparse < self.field_card)
        idx = torch.where(valid, sparse, torch.zeros_like(sparse)) + self.field_offset
        mask = valid.to(torch.float32).unsqueeze(-1)  # [N, F, 1]: padding/unknown contributes nothing
        emb = self.embedding(idx) * mask  # [N, F, k]
        first = (self.weight(idx) * mask).sum(dim=(1, 2))  # [N]
        x = (dense - self.dense_mean) / self.dense_std  # [N, D]
        first = first + (x * self.dense_linear).sum(dim=1) + self.bias
        fields = torch.cat([emb, x.unsqueeze(-1) * self.dense_vectors], dim=1)  # [N, F + D, k]
        square_of_sum = fields.sum(dim=1).pow(2)
        sum_of_square = fields.pow(2).sum(dim=1)
        second = 0.5 * (square_of_sum - sum_of_square).sum(dim=1)
        deep = self.mlp(torch.cat([emb.flatten(start_dim=1), x], dim=1)).squeeze(-1)
        return first + second + deep

    @torch.no_grad()
    def predict_proba(self, sparse: np.ndarray, dense: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        """Probabilities float32 [N] in eval mode (numpy in, numpy out)."""
        sparse_np, dense_np = _check_inputs(sparse, dense, self.n_sparse, self.n_dense)
        was_training = self.training
        self.eval()
        try:
            out = [
                torch.sigmoid(
                    self(
                        torch.from_numpy(sparse_np[i : i + batch_size]).to(self.bias.device),
                        torch.from_numpy(dense_np[i : i + batch_size]).to(self.bias.device),
                    )
                )
                .cpu()
                .numpy()
                for i in range(0, len(sparse_np), batch_size)
            ]
        finally:
            self.train(was_training)
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)

    def metadata(self) -> dict[str, str]:
        """Facts a server needs (stored as ONNX metadata_props)."""
        return {
            "zerorec.model": "deepfm",
            "zerorec.n_sparse": str(self.n_sparse),
            "zerorec.n_dense": str(self.n_dense),
            "zerorec.cardinalities": json.dumps(self.cardinalities),
            "zerorec.config": json.dumps(asdict(self.config)),
        }


class DeepFMEnsemble(nn.Module):
    """The mean logit of several DeepFMs over the same inputs (e.g. trained with other seeds):
    one ONNX graph, the same inputs and output as one model. Averaging cuts the seed-to-seed
    spread of the ranker's figures."""

    def __init__(self, members: Sequence[DeepFM]) -> None:
        super().__init__()
        if not members or len({(m.n_sparse, m.n_dense) for m in members}) != 1:
            raise InvalidInputError("an ensemble needs >= 1 DeepFM, all with the same inputs")
        self.members = nn.ModuleList(members)
        self.n_sparse, self.n_dense = members[0].n_sparse, members[0].n_dense
        self.history = members[0].history
        self.best_epoch = members[0].best_epoch

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(sparse, dense) for m in self.members]).mean(dim=0)

    @torch.no_grad()
    def predict_proba(self, sparse: np.ndarray, dense: np.ndarray) -> np.ndarray:
        s, d = _check_inputs(sparse, dense, self.n_sparse, self.n_dense)
        self.eval()
        return torch.sigmoid(self(torch.from_numpy(s), torch.from_numpy(d))).numpy().astype(np.float32)

    def metadata(self) -> dict[str, str]:
        meta = dict(self.members[0].metadata())
        meta["zerorec.ensemble"] = str(len(self.members))
        return meta


class _Probability(nn.Module):
    def __init__(self, model: DeepFM | DeepFMEnsemble) -> None:
        super().__init__()
        self.model = model

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(sparse, dense))


def _check_inputs(
    sparse: Any, dense: Any, n_sparse: int | None = None, n_dense: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(sparse)
    d = np.asarray(dense)
    if s.ndim != 2 or not np.issubdtype(s.dtype, np.integer):
        raise InvalidInputError(f"sparse must be a 2-D integer array, got {s.dtype} with shape {s.shape}")
    if d.ndim != 2 or not (np.issubdtype(d.dtype, np.floating) or np.issubdtype(d.dtype, np.integer)):
        raise InvalidInputError(f"dense must be a 2-D float array, got {d.dtype} with shape {d.shape}")
    if len(s) != len(d):
        raise InvalidInputError(f"sparse has {len(s)} rows but dense has {len(d)}")
    if n_sparse is not None and s.shape[1] != n_sparse:
        raise InvalidInputError(f"sparse must have {n_sparse} columns, got {s.shape[1]}")
    if n_dense is not None and d.shape[1] != n_dense:
        raise InvalidInputError(f"dense must have {n_dense} columns, got {d.shape[1]}")
    d32 = np.ascontiguousarray(d, dtype=np.float32)
    if not np.isfinite(d32).all():
        raise InvalidInputError("dense contains NaN or infinite values")
    return np.ascontiguousarray(s, dtype=np.int64), d32


def _evaluate(model: DeepFM, sparse: np.ndarray, dense: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    probs = model.predict_proba(sparse, dense)
    return {"auc": roc_auc(labels, probs), "logloss": log_loss(labels, probs)}


def train_deepfm(
    sparse: np.ndarray,
    dense: np.ndarray,
    labels: np.ndarray,
    cardinalities: Sequence[int],
    config: DeepFMConfig = DeepFMConfig(),
    valid: tuple | None = None,
    progress: bool = True,
    sample_weight: np.ndarray | None = None,
) -> DeepFM:
    """Train DeepFM; deterministic for a given `config.seed` (and thread count).

    `valid` = (sparse, dense, labels) enables early stopping on `config.early_stopping`
    (AUC, or log loss when the validation set has one class only); the best epoch's weights are
    kept. Indices outside a field's vocabulary are refused here (at serving they map to 0).
    After training, `model.history` lists per-epoch losses/metrics and `model.best_epoch` is set.
    """
    s, d = _check_inputs(sparse, dense)
    y = np.asarray(labels, dtype=np.float32).ravel()
    if len(y) != len(s) or len(s) == 0:
        raise InvalidInputError(f"need as many labels as rows (>0): {len(s)} rows, {len(y)} labels")
    if not np.isin(y, (0.0, 1.0)).all():
        raise InvalidInputError("labels must be 0 or 1")
    cards = np.asarray([int(c) for c in cardinalities], dtype=np.int64)
    if s.shape[1] != len(cards):
        raise InvalidInputError(f"sparse has {s.shape[1]} fields but {len(cards)} cardinalities were given")
    if ((s < 0) | (s >= cards)).any():
        bad = int(np.argmax(((s < 0) | (s >= cards)).any(axis=0)))
        raise InvalidInputError(f"sparse field {bad} has indices outside [0, {cards[bad]})")
    w = (
        np.ones(len(y), np.float32)
        if sample_weight is None
        else np.asarray(sample_weight, np.float32).ravel()
    )
    if len(w) != len(y) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise InvalidInputError("sample_weight must be finite, >= 0, not all zero, one per row")
    v: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    if valid is not None:
        vs, vd = _check_inputs(valid[0], valid[1], s.shape[1], d.shape[1])
        vy = np.asarray(valid[2], dtype=np.float32).ravel()
        if len(vy) != len(vs):
            raise InvalidInputError("valid labels and rows differ in length")
        v = (vs, vd, vy)

    old_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(config.threads, os.cpu_count() or 1)))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            return _fit(s, d, y, w, cards.tolist(), config, v, progress)
    finally:
        torch.set_num_threads(old_threads)


def _fit(
    s: np.ndarray,
    d: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    cards: list[int],
    config: DeepFMConfig,
    valid: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    progress: bool,
) -> DeepFM:
    mean = d.astype(np.float64).mean(axis=0) if len(d) else np.zeros(d.shape[1])
    std = d.astype(np.float64).std(axis=0) if len(d) else np.ones(d.shape[1])
    std = np.where(std < 1e-6, 1.0, std)
    device = torch.device(_DEVICE.get())
    model = DeepFM(cards, d.shape[1], config, dense_mean=mean, dense_std=std).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    ts, td, ty, tw = (torch.from_numpy(a).to(device) for a in (s, d, y, w))
    n = len(ts)
    steps = math.ceil(n / config.batch_size)
    history: list[dict[str, float]] = []
    best_key: float | None = None
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch = config.epochs
    bad_epochs = 0
    bar = tqdm(total=config.epochs * steps, desc="deepfm", unit="batch", disable=not progress, leave=False)
    try:
        for epoch in range(1, config.epochs + 1):
            model.train()
            perm = torch.randperm(n, generator=gen)
            total_loss = 0.0
            for i in range(steps):
                b = perm[i * config.batch_size : (i + 1) * config.batch_size].to(device)
                logits = model(ts[b], td[b])
                loss_each = nn.functional.binary_cross_entropy_with_logits(logits, ty[b], reduction="none")
                loss = (loss_each * tw[b]).sum() / tw[b].sum().clamp_min(1e-12)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total_loss += float(loss.detach()) * len(b)
                bar.update(1)
            row: dict[str, float] = {"epoch": epoch, "train_loss": total_loss / n}
            if valid is not None:
                m = _evaluate(model, *valid)
                row.update({"valid_auc": m["auc"], "valid_logloss": m["logloss"]})
                # Higher is better for the key; AUC is undefined with one class, then use log loss.
                use_auc = config.early_stopping == "auc" and not math.isnan(m["auc"])
                key = m["auc"] if use_auc else -m["logloss"]
                if best_key is None or key > best_key:
                    best_key, best_epoch, bad_epochs = key, epoch, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    bad_epochs += 1
                bar.set_postfix(auc=f"{m['auc']:.4f}", logloss=f"{m['logloss']:.4f}")
            history.append(row)
            if valid is not None and bad_epochs >= config.patience:
                break
    finally:
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    _neutralise_unseen(model, s, d)
    model = model.cpu()
    model.eval()
    model.history = history
    model.best_epoch = best_epoch
    return model


@torch.no_grad()
def _neutralise_unseen(model: DeepFM, s: np.ndarray, d: np.ndarray) -> None:
    """Inputs training never saw contribute nothing at serving, as an unknown index does: the
    embedding and weight of every index absent from the training rows (e.g. a device value no
    training event had) and the weights of every dense column that was constant there (its
    normalised value was always 0, so its weights kept their random start) are set to zero."""
    seen = torch.zeros(model.embedding.num_embeddings, dtype=torch.bool)
    offsets = model.field_offset.cpu().numpy()
    for f in range(model.n_sparse):
        used = np.unique(s[:, f])
        used = used[(used > 0) & (used < model.cardinalities[f])]
        seen[torch.from_numpy(used + offsets[f])] = True
    model.embedding.weight[~seen.to(model.embedding.weight.device)] = 0.0
    model.weight.weight[~seen.to(model.weight.weight.device)] = 0.0
    constant = (
        torch.from_numpy(d.std(axis=0) < 1e-6) if len(d) else torch.zeros(model.n_dense, dtype=torch.bool)
    )
    if constant.any():
        constant = constant.to(model.dense_vectors.device)
        model.dense_vectors[constant] = 0.0
        model.dense_linear[constant] = 0.0
        first = next(m for m in model.mlp if isinstance(m, nn.Linear))
        first.weight[:, model.n_sparse * model.config.embed_dim :][:, constant] = 0.0


def export_onnx(model: DeepFM | DeepFMEnsemble, path_or_buffer: str | Path | IO[bytes]) -> None:
    """Write `model` as ONNX (opset 17, CPU, dynamic batch): inputs `sparse` int64 [N, F] and raw
    `dense` float32 [N, D], output `prob` float32 [N]; metadata_props carry the model's shape facts."""
    import onnx

    model = model.cpu()
    was_training = model.training
    model.eval()
    wrapper = _Probability(model).eval()
    example = (
        torch.ones(2, model.n_sparse, dtype=torch.int64),
        torch.zeros(2, model.n_dense, dtype=torch.float32),
    )
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    wrapper,
                    example,
                    buf,
                    input_names=list(ONNX_INPUTS),
                    output_names=[ONNX_OUTPUT],
                    opset_version=ONNX_OPSET,
                    dynamic_axes={name: {0: "batch"} for name in (*ONNX_INPUTS, ONNX_OUTPUT)},
                    do_constant_folding=True,
                    dynamo=False,
                )
            except (TypeError, RuntimeError, NotImplementedError):  # legacy exporter removed: use dynamo
                buf = io.BytesIO()
                batch = torch.export.Dim("batch", min=1)
                program = torch.onnx.export(
                    wrapper,
                    example,
                    input_names=list(ONNX_INPUTS),
                    output_names=[ONNX_OUTPUT],
                    opset_version=ONNX_OPSET,
                    dynamic_shapes={"sparse": {0: batch}, "dense": {0: batch}},
                    dynamo=True,
                    external_data=False,
                )
                program.save(buf)
    finally:
        model.train(was_training)
    proto = onnx.load_from_string(buf.getvalue())
    for key, value in model.metadata().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    if isinstance(path_or_buffer, str | Path):
        Path(path_or_buffer).write_bytes(data)
    else:
        path_or_buffer.write(data)
