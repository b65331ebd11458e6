"""A FeatureSet's features as ``tf.Example``s: the parse spec, the parser and the writer.

TF Serving's Classify and Regress APIs feed a model serialized ``tf.Example``s; a ranker's
``examples`` signature (see :func:`recsys_tf.export.export_ranker`) parses them with
:func:`parse_examples` into the raw inputs ``serving_default`` takes, so both score alike.

Per feature kind (``f`` = the feature, its raw layout as :meth:`FeatureSet.arrays`):

* Categorical: one value, ``bytes_list`` (``dtype="string"``) or ``int64_list``; missing ->
  the padding value ("" / 0), which the model's lookup sends to an OOV bucket;
* Numeric: one value, ``float_list``; missing -> NaN, which the model's normalisation
  turns into 0, as for a NaN given to ``serving_default``;
* Sequence: a list of ids of the ``of`` feature's type, any length (a fixed ``max_len``
  list, padded at the end, or the real ids only); as :func:`~recsys_tf.features.pad_sequences`
  does, trailing padding is dropped, the last ``max_len`` ids kept, left-aligned and padded
  at the end to ``[max_len]``; missing -> all padding.

Example::

    serialized = to_examples(fs, frame, names)            # List[bytes], one per row
    inputs = parse_examples(fs, names, tf.constant(serialized))
    model(inputs)                                         # == model(fs.arrays(frame, names))
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence as Seq

import numpy as np

from recsys_tf.features import Categorical, FeatureSet, Numeric

__all__ = ["feature_spec", "parse_examples", "to_examples"]


def _pad(dtype):
    """The padding value of ids of a ``tf.DType``: "" for strings, 0 for integers."""
    return "" if dtype == "string" else 0


def feature_spec(feature_set: FeatureSet, names: Optional[Seq[str]] = None) -> dict:
    """``tf.io.parse_example`` features for ``names`` (default: all of the FeatureSet), of
    the dtypes of :meth:`FeatureSet.input_signature`: ``FixedLenFeature([])`` for
    categoricals and numerics (with the defaults above), ``VarLenFeature`` for sequences."""
    from recsys_tf.backend import tf

    spec = {}
    for name, tensor in feature_set.input_signature(names).items():
        if tensor.shape.rank == 2:                                   # a sequence
            spec[name] = tf.io.VarLenFeature(tensor.dtype)
        else:
            default = float("nan") if tensor.dtype.is_floating else _pad(tensor.dtype)
            spec[name] = tf.io.FixedLenFeature([], tensor.dtype, default_value=default)
    return spec


def _fit_sequence(sparse, max_len: int, pad):
    """``[batch, ?]`` ragged ids -> ``[batch, max_len]``: trailing padding dropped, the last
    ``max_len`` ids kept, padded at the end (pad_sequences in the graph)."""
    from recsys_tf.backend import tf

    dense = tf.sparse.to_dense(sparse, default_value=pad)
    dense = tf.concat([dense, tf.fill([tf.shape(dense)[0], 1], tf.constant(pad, dense.dtype))],
                      axis=1)                                  # at least one column
    width = tf.shape(dense)[1]
    positions = tf.range(1, width + 1)[tf.newaxis, :]
    length = tf.reduce_max(tf.where(tf.not_equal(dense, pad), positions, 0), axis=1)
    start = tf.maximum(length - max_len, 0)
    index = start[:, tf.newaxis] + tf.range(max_len)[tf.newaxis, :]
    taken = tf.gather(dense, tf.minimum(index, width - 1), batch_dims=1)
    return tf.where(index < length[:, tf.newaxis], taken, tf.constant(pad, dense.dtype))


def parse_examples(feature_set: FeatureSet, names: Seq[str], serialized) -> Dict[str, object]:
    """The raw model inputs (``{name: tensor}``, as :meth:`FeatureSet.input_signature`) of a
    ``[batch]`` string tensor of serialized ``tf.Example``s."""
    from recsys_tf.backend import tf

    names = list(names)
    parsed = tf.io.parse_example(serialized, feature_spec(feature_set, names))
    return {name: _fit_sequence(value, feature_set[name].max_len, _pad(value.dtype))
            if isinstance(value, tf.sparse.SparseTensor) else value
            for name, value in parsed.items()}


def _feature(example, name: str, dtype: str, values) -> None:
    feature = example.features.feature[name]
    if dtype == "float":
        feature.float_list.value.extend(float(v) for v in values)
    elif dtype == "string":
        feature.bytes_list.value.extend(
            v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values)
    else:
        feature.int64_list.value.extend(int(v) for v in values)


def to_examples(feature_set: FeatureSet, frame_or_arrays, names: Optional[Seq[str]] = None
                ) -> List[bytes]:
    """One serialized ``tf.Example`` per row of a DataFrame (laid out by
    :meth:`FeatureSet.arrays`) or of ``{name: array}`` already so laid out. A NaN numeric is
    left out (the parser's default is NaN); a sequence keeps its ``max_len`` padded ids."""
    from tensorflow.core.example import example_pb2

    names = feature_set.names if names is None else list(names)
    if isinstance(frame_or_arrays, Mapping):
        arrays = {n: np.asarray(frame_or_arrays[n]) for n in names}
    else:
        arrays = feature_set.arrays(frame_or_arrays, names)
    rows = {len(a) for a in arrays.values()}
    if len(rows) > 1:
        raise ValueError(f"features have different numbers of rows: "
                         f"{ {n: len(a) for n, a in arrays.items()} }")
    n_rows = rows.pop() if rows else 0
    out = []
    for i in range(n_rows):
        example = example_pb2.Example()
        for name in names:
            f, value = feature_set[name], arrays[name][i]
            if isinstance(f, Numeric):
                if not np.isnan(value):
                    _feature(example, name, "float", [value])
            elif isinstance(f, Categorical):
                _feature(example, name, f.dtype, [value])
            else:
                _feature(example, name, feature_set.categorical_of(name).dtype, list(value))
        out.append(example.SerializeToString())
    return out
