"""Request building for the recommendation client: signature -> request tensors.

Everything sent to a served model is shaped by its signature (``GetModelMetadata``): values
are cast to the input's dtype and shaped to its rank (scalars, one value per row, padded id
sequences), then checked against it, so a request that does not fit fails here with a
:class:`~recsys_tf.client.errors.RequestError` naming the input, before anything is sent.
:class:`RequestBuilder` is the part of a ``Recommender`` that does it.

Contract: a signature is ``{"inputs": {name: {"dtype", "shape"}}, "outputs": {...}}`` as
``ServingClient.signature`` describes it (dtype a numpy dtype or ``"string"``, shape a list with
-1 for unknown sizes, None for unknown rank); an input the user has no value for is sent as
unknown (``""`` / NaN / 0), or raises with ``strict=True``.

Example::

    builder = RequestBuilder()
    inputs, missing = builder.build("deepfm", sig, {"user_id": "u1", "hour": "20"}, rows=3,
                                    items={"item_id": ["i1", "i2", "i3"]})
"""
from __future__ import annotations

import numpy as np

from recsys_tf.client.errors import RequestError

__all__ = ["RequestBuilder", "kind", "summary"]


# ------------------------------------------------------------------------------ requests
def _to_bytes(value):
    if type(value) is str:                              # the common case first
        return value.encode()
    if isinstance(value, bytes):
        return value
    if value is None or (isinstance(value, float) and value != value):
        return b""
    if isinstance(value, np.generic):
        value = value.item()
    return str(value).encode()


def _string_column(model, name, values):
    """An object array of str/bytes the codec takes as it is; None -> "" (unknown)."""
    arr = values if isinstance(values, np.ndarray) and values.dtype == object else \
        np.asarray(values, dtype=object)
    if arr.ndim != 1:
        raise RequestError(model, name, f"expects one value per row, got shape {arr.shape}")
    types = set(map(type, arr.tolist()))
    if types <= {str} or types <= {bytes}:
        return arr
    return np.array([_to_bytes(v) for v in arr], dtype=object)


def _numeric(model, name, values, dtype):
    try:
        if dtype.kind == "f":
            if isinstance(values, np.ndarray) and values.dtype.kind in "fiu":
                return values.astype(dtype, copy=False)
            return np.array([np.nan if v is None else v for v in values], dtype=dtype)
        if isinstance(values, np.ndarray) and values.dtype.kind in "iub":
            return values.astype(dtype, copy=False)
        out = np.array([0 if v is None or (isinstance(v, float) and v != v)
                        else int(v) if isinstance(v, (str, bytes)) else v for v in values])
        if out.size and out.dtype.kind not in "iub":
            raise ValueError(f"values of kind {out.dtype} are not integers")
        return out.astype(dtype)
    except (TypeError, ValueError) as e:
        sample = next((v for v in values if v is not None), None)
        raise RequestError(model, name, f"cannot convert {sample!r} to {dtype} ({e})") from None


def _is_sequence(v):
    return isinstance(v, (list, tuple, np.ndarray))


def _padded(model, name, values, rows, width, dtype):
    """``[rows, width]`` from one list per row (or one list for all rows); the last ``width``
    values are kept (histories are oldest first), the rest padded with "" / 0."""
    is_str = dtype == "string"
    pad = b"" if is_str else 0
    lens = [len(v) for v in values if _is_sequence(v)]
    if width is None or width < 0:
        width = max(lens + [1])
    shared = len(values) == 1 and rows != 1     # one value for every row: convert it once
    n = 1 if shared else rows
    out = np.empty((n, width), dtype=object) if is_str else np.zeros((n, width), dtype)
    if is_str:
        out[:] = pad

    def row(v):
        if v is None:
            return []
        if not _is_sequence(v):
            raise RequestError(model, name, f"expects a sequence per row, got {v!r:.60}")
        v = list(v)[-width:]
        return [_to_bytes(x) for x in v] if is_str else v

    if shared:      # a read-only view repeating the row: the codec sends it packed
        r = row(values[0])
        if r:
            try:
                out[0, :len(r)] = np.asarray(r, dtype=object if is_str else dtype)
            except (TypeError, ValueError) as e:
                raise RequestError(model, name, f"cannot convert {r[:3]!r} to {dtype} ({e})") \
                    from None
        return np.broadcast_to(out, (rows, width))
    for i, v in enumerate(values):
        r = row(v)
        if r:
            try:
                out[i, :len(r)] = r
            except (TypeError, ValueError) as e:
                raise RequestError(model, name, f"cannot convert {r[:3]!r} to {dtype} ({e})") \
                    from None
    return out


def _input(model, name, spec, values, rows, broadcast):
    """One signature input from ``values`` (``rows`` of them, or one to repeat when
    ``broadcast``), cast to the signature's dtype and shaped to its rank."""
    dtype, shape = spec["dtype"], spec["shape"]
    if isinstance(dtype, str) and dtype != "string":
        raise RequestError(model, name, f"dtype {dtype} is not supported by this client")
    rank = 1 if shape is None else len(shape)
    if rank == 0:
        v = values[0] if broadcast else values
        if _is_sequence(v):
            raise RequestError(model, name, f"expects one scalar, got {v!r:.60}")
        if dtype == "string":
            return np.array(_to_bytes(v), dtype=object)
        return _numeric(model, name, [v], dtype).reshape(())
    if rank == 1:
        if broadcast:
            v = values[0]
            if _is_sequence(v):
                raise RequestError(model, name, f"expects one value per row, got the sequence "
                                   f"{v!r:.60}")
            if dtype == "string":   # a read-only view repeating the value (sent packed)
                one = np.array([_to_bytes(v)], dtype=object)
                return one if rows == 1 else np.broadcast_to(one, (rows,))
            return np.full(rows, _numeric(model, name, [v], dtype)[0], dtype=dtype)
        if len(values) != rows:
            raise RequestError(model, name, f"has {len(values)} values for {rows} rows")
        if dtype == "string":
            return _string_column(model, name, values)
        return _numeric(model, name, values, dtype)
    if rank == 2:
        width = shape[1] if shape is not None else None
        return _padded(model, name, values if not broadcast else [values[0]], rows, width,
                       dtype)
    raise RequestError(model, name, f"rank {rank} inputs (shape {shape}) are not supported")


def _check(model, name, spec, array, rows):
    """The built array fits the signature (dtype, rank, fixed sizes)."""
    dtype, shape = spec["dtype"], spec["shape"]
    ok_dtype = array.dtype.kind in "OSU" if dtype == "string" else array.dtype == dtype
    if not ok_dtype:
        raise RequestError(model, name, f"dtype {array.dtype} does not match the signature's "
                           f"{dtype}")
    if shape is None:
        return
    if array.ndim != len(shape):
        raise RequestError(model, name, f"rank {array.ndim} does not match the signature's "
                           f"shape {shape}")
    for axis, (got, want) in enumerate(zip(array.shape, shape)):
        if want is not None and want >= 0 and got != want:
            raise RequestError(model, name, f"size {got} on axis {axis} does not match the "
                               f"signature's shape {shape}")


def summary(inputs):
    """A one-line description of request tensors for the debug log."""
    parts = []
    for name, a in inputs.items():
        a = np.asarray(a)
        first = a.reshape(-1)[:1].tolist()
        parts.append(f"{name}:{'string' if a.dtype == object else a.dtype}{list(a.shape)}"
                     f"={first[0] if first else None!r}")
    return ", ".join(parts)


def kind(dtype):
    """numpy kind of a signature dtype; "T" for strings, "?" for dtypes numpy cannot hold."""
    if dtype == "string":
        return "T"
    if isinstance(dtype, str):
        return "?"
    return np.dtype(dtype).kind


# ------------------------------------------------------------------------------ the builder
class RequestBuilder:
    """Request inputs for a signature from item columns and the user's (and context) values.

    Args:
      strict: a signature input with no value is an error (``RequestError``) rather than
        sent as unknown (default False).
    """

    def __init__(self, strict=False):
        self.strict = bool(strict)

    def build(self, model, sig, user, rows, items=None, skip=(), encoded=(), made=None):
        """Request inputs for a signature: item columns first, then user/context values.

        ``items``: ``{column: values}``, one value per row. ``skip``: input names to leave
        out (the caller sets them). ``encoded`` names item columns taken from the item
        store's ``wire`` (object arrays of ``bytes``, one per row): for a string input of one
        value per row they are sent as they are, when they are such arrays; anything else
        goes through the usual conversion. A user or context value goes out as one row where
        the signature's first dimension is 1 (``one_user``), else repeated for each of the
        ``rows``. ``made`` (optional, a dict kept for one ``recommend`` call, whose stages
        pass the same ``user``): user-side arrays already built, by input name, dtype, shape
        and rows - the retrieval and ``one_user`` requests carry the same ones, converted once.
        Returns ``(inputs, missing)``; inputs the user has no value for are sent as unknown
        ("" / NaN / 0) and listed in ``missing`` (or raise with ``strict``).
        """
        out, missing = {}, []
        for name, spec in sig["inputs"].items():
            if name in skip:
                continue
            if name in encoded and spec["dtype"] == "string" and spec["shape"] is not None \
                    and len(spec["shape"]) == 1:
                arr = items[name]
                if isinstance(arr, np.ndarray) and arr.dtype == object and arr.shape == (rows,):
                    _check(model, name, spec, arr, rows)
                    out[name] = arr
                    continue
            if items is not None and name in items:
                out[name] = arr = _input(model, name, spec, items[name], rows, False)
                _check(model, name, spec, arr, rows)
                continue
            known = name in user
            if not known:
                if self.strict:
                    raise RequestError(model, name, "no value for this input (strict mode)")
                missing.append(name)
            shape = spec["shape"]
            n = 1 if shape and shape[0] == 1 else rows
            # what decides the array: dtype, rank and inner sizes, rows (not how the
            # signature names the first dimension, -1 or 1)
            key = (name, str(spec["dtype"]), n,
                   None if shape is None else (len(shape), tuple(shape[1:])))
            arr = None if made is None else made.get(key)
            if arr is None:
                arr = _input(model, name, spec, [user[name] if known else None], n, True)
                if made is not None:
                    made[key] = arr
            _check(model, name, spec, arr, n)
            out[name] = arr
        return out, missing
