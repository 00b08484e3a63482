"""EASE weights are stored as float16 and widened at load through a table: bit-identical."""

from __future__ import annotations

import numpy as np
from zerorec.recall.channels import _to_float32


def test_table_widening_is_bit_identical_to_astype() -> None:
    every = np.arange(65536, dtype=np.uint16).view(np.float16).reshape(256, 256)  # all 2^16 values
    got = _to_float32(every)
    assert got.dtype == np.float32 and got.shape == every.shape
    np.testing.assert_array_equal(got.view(np.uint32), every.astype(np.float32).view(np.uint32))
    strided = every[:, ::3]
    np.testing.assert_array_equal(_to_float32(strided), strided.astype(np.float32))
    assert _to_float32(np.ones(3, np.float64)).dtype == np.float32
