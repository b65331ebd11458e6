"""Request building for the recommendation client: signature -> request tensors.

Everything sent to a served model is shaped by its signature (``GetModelMetadata``): values
are cast to the input's dtype and shaped to its rank (``_input``: scalars, one value per row,
padded id sequences), then checked against it (``_check``), so a request that does not fit
fails here with a :class:`RequestError` naming the input, before anything is sent. Also the
client's error types and the helpers that name a failure.
"""
from __future__ import annotations

import grpc
import numpy as np

__all__ = ["RequestError", "DeadlineExceeded"]


# ------------------------------------------------------------------------------ errors
class RequestError(ValueError):
    """A request that does not fit the model's signature; raised before anything is sent.

    ``model`` and ``field`` (the input's name, or None) say where.
    """

    code = "INVALID_REQUEST"

    def __init__(self, model, field, message):
        where = f"input {field!r}: " if field is not None else ""
        super().__init__(f"{model}: {where}{message}")
        self.model, self.field = model, field


class DeadlineExceeded(TimeoutError):
    """A stage's share of the deadline ran out before a (further) call could be made."""

    code = "DEADLINE_EXCEEDED"


_FAILURES = (grpc.RpcError, RequestError, DeadlineExceeded)


def _error_code(err) -> str:
    if isinstance(err, grpc.RpcError) and callable(getattr(err, "code", None)):
        return err.code().name
    return getattr(err, "code", None) or type(err).__name__


def _error_text(err) -> str:
    if isinstance(err, grpc.RpcError) and callable(getattr(err, "details", None)):
        return f"{_error_code(err)}: {err.details()}"
    return f"{_error_code(err)}: {err}"


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


def _summary(inputs):
    """A one-line description of request tensors for the debug log."""
    parts = []
    for name, a in inputs.items():
        a = np.asarray(a)
        first = a.reshape(-1)[:1].tolist()
        parts.append(f"{name}:{'string' if a.dtype == object else a.dtype}{list(a.shape)}"
                     f"={first[0] if first else None!r}")
    return ", ".join(parts)


def _kind(dtype):
    """numpy kind of a signature dtype; "T" for strings, "?" for dtypes numpy cannot hold."""
    if dtype == "string":
        return "T"
    if isinstance(dtype, str):
        return "?"
    return np.dtype(dtype).kind
