"""Serve an exported DeepFM with onnxruntime (no torch import on this path)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from zerorec.errors import IntegrityError, InvalidInputError


class OnnxScorer:
    """Scores candidates with an ONNX DeepFM: `sparse` int64 [N, F], `dense` float32 [N, D] -> prob [N]."""

    def __init__(self, model: bytes | str | Path, threads: int = 1) -> None:
        """Load `model` (ONNX bytes or a file path) into a session with `threads` intra-op threads."""
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        source = str(model) if isinstance(model, Path) else model
        try:
            self._session = ort.InferenceSession(
                source, sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types for a bad graph
            raise IntegrityError(f"cannot load ONNX ranking model: {exc}") from exc
        inputs = {i.name: i for i in self._session.get_inputs()}
        if set(inputs) != {"sparse", "dense"} or len(self._session.get_outputs()) != 1:
            raise IntegrityError(f"ONNX model has inputs {sorted(inputs)}; expected 'sparse' and 'dense'")
        self._output = self._session.get_outputs()[0].name
        self.n_sparse = _static_dim(inputs["sparse"].shape)
        self.n_dense = _static_dim(inputs["dense"].shape)
        self.metadata: dict[str, Any] = dict(self._session.get_modelmeta().custom_metadata_map)
        cards = self.metadata.get("zerorec.cardinalities")
        self.cardinalities: np.ndarray | None = np.asarray(json.loads(cards), np.int64) if cards else None

    def score(self, sparse: np.ndarray, dense: np.ndarray) -> np.ndarray:
        """Probabilities float32 [N]; indices outside a field's vocabulary score as unknown (0)."""
        s = np.asarray(sparse)
        d = np.asarray(dense)
        if s.ndim != 2 or not np.issubdtype(s.dtype, np.integer):
            raise InvalidInputError(f"sparse must be a 2-D int64 array, got {s.dtype} with shape {s.shape}")
        if d.ndim != 2 or not np.issubdtype(d.dtype, np.floating):
            raise InvalidInputError(f"dense must be a 2-D float32 array, got {d.dtype} with shape {d.shape}")
        if s.shape[0] != d.shape[0]:
            raise InvalidInputError(f"sparse has {s.shape[0]} rows but dense has {d.shape[0]}")
        if self.n_sparse is not None and s.shape[1] != self.n_sparse:
            raise InvalidInputError(f"sparse must have {self.n_sparse} columns, got {s.shape[1]}")
        if self.n_dense is not None and d.shape[1] != self.n_dense:
            raise InvalidInputError(f"dense must have {self.n_dense} columns, got {d.shape[1]}")
        if s.shape[0] == 0:
            return np.zeros(0, np.float32)
        s = np.ascontiguousarray(s, dtype=np.int64)
        d = np.ascontiguousarray(d, dtype=np.float32)
        if not np.isfinite(d).all():
            raise InvalidInputError("dense contains NaN or infinite values")
        if self.cardinalities is not None:  # the graph also maps these to 0; clip here for any model
            s = np.where((s < 0) | (s >= self.cardinalities), 0, s)
        out = self._session.run([self._output], {"sparse": s, "dense": d})[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)


def _static_dim(shape: list[Any]) -> int | None:
    return shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None
