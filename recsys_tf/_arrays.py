"""Array validation helpers shared by :mod:`recsys_tf.metrics` and
:mod:`recsys_tf.client.rerank`.

Numpy only: this module must import neither TensorFlow nor any model code, because the
client (``recsys_tf.client``) imports it. Each helper raises ``ValueError`` naming
the argument, the value it got and what was expected.
"""
from __future__ import annotations

import numpy as np

__all__ = ["as_1d", "numeric_1d", "finite_1d", "same_length"]


def as_1d(x, name):
    """``x`` as a numpy array, which must be 1-D."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got an array of shape {arr.shape}")
    return arr


def numeric_1d(x, name):
    """``x`` as a 1-D float64 array (NaN and inf allowed)."""
    arr = as_1d(x, name)
    try:
        return arr.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}") from None


def finite_1d(x, name):
    """``x`` as a 1-D float64 array of finite values."""
    arr = numeric_1d(x, name)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(
            f"{name} must be finite, got {arr[bad][:3].tolist()} at position(s) "
            f"{np.flatnonzero(bad)[:3].tolist()}"
        )
    return arr


def same_length(a, name_a, b, name_b):
    """Raise unless ``a`` and ``b`` have the same length."""
    if len(a) != len(b):
        raise ValueError(
            f"{name_a} has {len(a)} elements but {name_b} has {len(b)}; "
            "they must be the same length"
        )
