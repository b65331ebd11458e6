"""numpy <-> ``TensorProto`` conversion without calling TensorFlow.

Only the generated protobuf modules are used here (``tensor_pb2``, ``types_pb2``), so the
conversions are cheap and behave the same in a client process and in the server.

Encoding (``to_tensor_proto(array, tensor_content=True)``):

* with ``tensor_content=True`` (the default, what the client sends): numeric arrays (floats,
  signed/unsigned ints, complex) go into the packed ``tensor_content`` bytes, little-endian,
  C order -- the layout TensorFlow's ``Tensor::AsProtoTensorContent`` writes, and what TF
  Serving answers with when started with ``--enable_serialization_as_tensor_content``;
* with ``tensor_content=False``: every dtype goes into its typed repeated field
  (``float_val``, ``double_val``, ``int_val``, ``int64_val``, ``half_val``, ``string_val``,
  ...), as ``Tensor::AsProtoField`` writes it -- what TF Serving answers with by default
  (``--enable_serialization_as_tensor_content`` is false in its ``main.cc``);
* bool arrays go into ``bool_val`` either way (as ``tf.make_tensor_proto`` does);
* strings go into ``string_val``; ``str`` elements are encoded as UTF-8. With
  ``tensor_content=True``, a string array whose rows are one row repeated -- a
  ``np.broadcast_to`` view, stride 0 on the first axis, as the client builds a user's
  features repeated for every candidate -- goes into ``tensor_content`` in TensorFlow's packed
  string layout (every element's length as a varint, then all the bytes), built from the one
  row in a few byte copies. TensorFlow (``Tensor::FromProto``, so TF Serving and
  ``tf.io.parse_tensor``) reads that layout; ``tf.make_ndarray`` does not.

Decoding (``to_ndarray``) reads ``tensor_content`` when present (for strings, the packed
layout) and otherwise the typed repeated fields (``float_val``, ``int64_val``, ``string_val``,
...), so it reads TF Serving's answers in either layout. As with ``tf.make_ndarray``, a
repeated field shorter than the shape is padded with its last value, so a single value fills
the whole tensor.
"""
from __future__ import annotations

import math
import sys

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2

__all__ = ["to_tensor_proto", "to_ndarray", "dtype_name", "numpy_dtype", "dtype_enum",
           "value_field", "unpack_strings", "check_packed_strings"]

_DT = types_pb2

# enum -> numpy dtype for everything stored as plain little-endian values.
_NUMPY = {
    _DT.DT_FLOAT: np.dtype("<f4"),
    _DT.DT_DOUBLE: np.dtype("<f8"),
    _DT.DT_HALF: np.dtype("<f2"),
    _DT.DT_INT8: np.dtype("i1"),
    _DT.DT_INT16: np.dtype("<i2"),
    _DT.DT_INT32: np.dtype("<i4"),
    _DT.DT_INT64: np.dtype("<i8"),
    _DT.DT_UINT8: np.dtype("u1"),
    _DT.DT_UINT16: np.dtype("<u2"),
    _DT.DT_UINT32: np.dtype("<u4"),
    _DT.DT_UINT64: np.dtype("<u8"),
    _DT.DT_BOOL: np.dtype("bool"),
    _DT.DT_COMPLEX64: np.dtype("<c8"),
    _DT.DT_COMPLEX128: np.dtype("<c16"),
}

# numpy kind+itemsize -> enum.
_ENUM = {(dt.kind, dt.itemsize): enum for enum, dt in _NUMPY.items()}

# The short names TensorFlow uses in its own messages (DataTypeString).
_NAMES = {
    _DT.DT_FLOAT: "float",
    _DT.DT_DOUBLE: "double",
    _DT.DT_HALF: "half",
    _DT.DT_BFLOAT16: "bfloat16",
    _DT.DT_INT8: "int8",
    _DT.DT_INT16: "int16",
    _DT.DT_INT32: "int32",
    _DT.DT_INT64: "int64",
    _DT.DT_UINT8: "uint8",
    _DT.DT_UINT16: "uint16",
    _DT.DT_UINT32: "uint32",
    _DT.DT_UINT64: "uint64",
    _DT.DT_BOOL: "bool",
    _DT.DT_STRING: "string",
    _DT.DT_COMPLEX64: "complex64",
    _DT.DT_COMPLEX128: "complex128",
    _DT.DT_RESOURCE: "resource",
    _DT.DT_VARIANT: "variant",
}
_BY_NAME = {name: enum for enum, name in _NAMES.items()}
_BY_NAME.update({"float32": _DT.DT_FLOAT, "float64": _DT.DT_DOUBLE, "float16": _DT.DT_HALF,
                 "str": _DT.DT_STRING, "bytes": _DT.DT_STRING, "object": _DT.DT_STRING})

# Repeated field that holds the values of each dtype when tensor_content is empty.
_FIELD = {
    _DT.DT_FLOAT: "float_val",
    _DT.DT_DOUBLE: "double_val",
    _DT.DT_HALF: "half_val",
    _DT.DT_INT8: "int_val",
    _DT.DT_INT16: "int_val",
    _DT.DT_INT32: "int_val",
    _DT.DT_UINT8: "int_val",
    _DT.DT_UINT16: "int_val",
    _DT.DT_INT64: "int64_val",
    _DT.DT_UINT32: "uint32_val",
    _DT.DT_UINT64: "uint64_val",
    _DT.DT_BOOL: "bool_val",
    _DT.DT_STRING: "string_val",
    _DT.DT_COMPLEX64: "scomplex_val",
    _DT.DT_COMPLEX128: "dcomplex_val",
}

_LITTLE = sys.byteorder == "little"


def shape_text(dims) -> str:
    """A shape as TF Serving's messages print it: ``[2,3]``."""
    return "[" + ",".join(str(d) for d in dims) + "]"


def dtype_name(enum: int) -> str:
    """TensorFlow's short name of a ``types_pb2.DataType`` value ("float", "string", ...)."""
    name = _NAMES.get(int(enum))
    if name is not None:
        return name
    try:
        return types_pb2.DataType.Name(int(enum))
    except ValueError:
        return f"dtype({int(enum)})"


def dtype_enum(dtype) -> int:
    """The ``types_pb2.DataType`` for a numpy dtype, a name ("float32", "string") or an enum."""
    if isinstance(dtype, (int, np.integer)) and not isinstance(dtype, bool):
        if int(dtype) in _NAMES or int(dtype) in types_pb2.DataType.values():
            return int(dtype)
        raise TypeError(f"unknown DataType enum value {dtype}")
    if isinstance(dtype, str):
        key = dtype.lower()
        if key.startswith("dt_"):
            return types_pb2.DataType.Value(dtype.upper())
        if key in _BY_NAME:
            return _BY_NAME[key]
    as_tf = getattr(dtype, "as_datatype_enum", None)  # a tf.DType, without importing TF
    if as_tf is not None:
        return int(as_tf)
    dt = np.dtype(dtype)
    if dt.kind in "OSU":
        return _DT.DT_STRING
    try:
        return _ENUM[(dt.kind, dt.itemsize)]
    except KeyError:
        raise TypeError(f"unsupported dtype for a TensorProto: {dt}") from None


def value_field(enum: int):
    """(repeated field name, values per element) that holds a ``DataType``'s values when
    ``tensor_content`` is empty, e.g. ``("float_val", 1)``, ``("scomplex_val", 2)``."""
    enum = int(enum)
    try:
        name = _FIELD[enum]
    except KeyError:
        raise TypeError(f"unsupported TensorProto dtype: {dtype_name(enum)}") from None
    return name, 2 if enum in (_DT.DT_COMPLEX64, _DT.DT_COMPLEX128) else 1


def numpy_dtype(enum: int) -> np.dtype:
    """The numpy dtype used for a ``DataType`` (object for DT_STRING)."""
    enum = int(enum)
    if enum == _DT.DT_STRING:
        return np.dtype(object)
    try:
        return _NUMPY[enum]
    except KeyError:
        raise TypeError(f"unsupported TensorProto dtype: {dtype_name(enum)}") from None


def _to_bytes(value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(
        f"a string tensor holds str or bytes, got {type(value).__name__}: {value!r:.60}")


def to_tensor_proto(array, dtype=None, out=None,
                    tensor_content: bool = True) -> tensor_pb2.TensorProto:
    """Encode an array-like as a ``TensorProto``.

    ``dtype`` (optional) is a numpy dtype, a name such as ``"float32"`` or ``"string"``, or a
    ``types_pb2.DataType`` value; numeric values are cast to it. Without it the array's own
    dtype decides; ``str``/``bytes``/object arrays become DT_STRING. ``out`` (optional) is an
    empty ``TensorProto`` to fill in place, e.g. ``request.inputs[name]``, which saves copying
    a large message; the filled proto is returned. ``tensor_content`` (default True): numeric
    values go into the packed ``tensor_content`` bytes; False: into the typed repeated field
    of their dtype (``float_val``, ``int64_val``, ...), as TF Serving answers by default.
    """
    target = None if dtype is None else dtype_enum(dtype)
    if target == _DT.DT_STRING:
        arr = np.asarray(array, dtype=object) if not isinstance(array, np.ndarray) else array
    elif target is not None:
        arr = np.asarray(array, dtype=numpy_dtype(target))
    else:
        arr = np.asarray(array)

    proto = tensor_pb2.TensorProto() if out is None else out
    dims = proto.tensor_shape.dim
    for d in arr.shape:
        dims.add().size = int(d)

    if target == _DT.DT_STRING or arr.dtype.kind in "OSU":
        proto.dtype = _DT.DT_STRING
        if tensor_content and arr.ndim and arr.shape[0] > 1 and arr.strides[0] == 0:
            # one row, repeated
            proto.tensor_content = _packed_repeat(arr[:1], arr.shape[0])
        else:
            _put_strings(proto.string_val, arr)
        return proto

    enum = dtype_enum(arr.dtype) if target is None else target
    proto.dtype = enum
    if enum == _DT.DT_BOOL:
        proto.bool_val.extend(arr.reshape(-1).tolist())
        return proto
    wire = _NUMPY[enum]
    if arr.dtype != wire:
        arr = arr.astype(wire)
    if not tensor_content:
        _put_typed(proto, arr.reshape(-1), enum)
        return proto
    proto.tensor_content = np.ascontiguousarray(arr).tobytes()
    return proto


def _put_typed(proto, flat: np.ndarray, enum: int) -> None:
    """The values of a flat numeric array into the typed field of ``enum``
    (``Tensor::AsProtoField``): halves as their 16-bit patterns, complex numbers as
    (real, imaginary) pairs."""
    field = getattr(proto, _FIELD[enum])
    if enum == _DT.DT_HALF:
        field.extend(flat.view(np.uint16).tolist())
    elif enum in (_DT.DT_COMPLEX64, _DT.DT_COMPLEX128):
        field.extend(np.stack([flat.real, flat.imag], axis=-1).reshape(-1).tolist())
    else:
        field.extend(flat.tolist())


def _put_strings(field, arr: np.ndarray) -> None:
    """``string_val`` from a bytes/str/object array: one ``extend`` of the plain list when the
    values are all ``bytes`` (the usual request), one ``str.encode`` each when they are all
    ``str``, and :func:`_to_bytes` element by element otherwise (mixed or bad values)."""
    values = arr.reshape(-1).tolist()
    if arr.dtype.kind != "U":
        try:
            field.extend(values)       # bytes only: no per-element Python work
            return
        except TypeError:              # str (or a bad element) among them
            del field[:]
    try:
        field.extend([v.encode("utf-8") for v in values])
    except AttributeError:             # not all str
        del field[:]
        field.extend([_to_bytes(v) for v in values])


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _packed_repeat(row: np.ndarray, times: int) -> bytes:
    """TensorFlow's packed string ``tensor_content`` of ``row`` repeated ``times`` times."""
    field = tensor_pb2.TensorProto().string_val
    _put_strings(field, row)
    values = list(field)
    lengths = b"".join(_varint(len(v)) for v in values)
    return lengths * times + b"".join(values) * times


def _packed_lengths(content: bytes, n: int):
    """(the ``n`` lengths a packed string ``tensor_content`` lists, where its bytes start);
    ValueError when ``content`` does not hold exactly those strings."""
    head = np.frombuffer(content[:n], dtype=np.uint8)
    if len(head) == n and (head < 0x80).all():          # every length below 128: one byte each
        lengths, pos, total = head, n, int(head.sum(dtype=np.int64))
    else:
        lengths, pos = [], 0
        for _ in range(n):
            value = shift = 0
            while True:
                if pos >= len(content) or shift > 28:
                    raise ValueError("packed string tensor_content: truncated or bad varint")
                byte = content[pos]
                pos += 1
                value |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            lengths.append(value)
        total = sum(lengths)
    if pos + total != len(content):
        raise ValueError(f"packed string tensor_content holds {len(content)} bytes, but "
                         f"{n} strings of the lengths it lists need {pos + total}")
    return lengths, pos


def check_packed_strings(content: bytes, n: int) -> None:
    """ValueError unless ``content`` is a packed string ``tensor_content`` of ``n`` strings."""
    _packed_lengths(content, n)


def unpack_strings(content: bytes, n: int) -> list:
    """The ``n`` byte strings of a packed string ``tensor_content`` (varint lengths, then the
    bytes); ValueError when ``content`` is not exactly that."""
    lengths, pos = _packed_lengths(content, n)
    ends = np.cumsum(lengths, dtype=np.int64) + pos
    starts = ends - np.asarray(lengths, dtype=np.int64)
    return [content[a:b] for a, b in zip(starts.tolist(), ends.tolist())]


def to_ndarray(proto: tensor_pb2.TensorProto, decode_strings: bool = False) -> np.ndarray:
    """Decode a ``TensorProto`` into a numpy array.

    DT_STRING tensors come back as object arrays of ``bytes``; with ``decode_strings=True``
    they are UTF-8 decoded into ``str``.
    """
    if proto.tensor_shape.unknown_rank:
        raise ValueError("cannot decode a TensorProto with unknown rank")
    shape = tuple(int(d.size) for d in proto.tensor_shape.dim)
    if any(d < 0 for d in shape):
        raise ValueError(f"cannot decode a TensorProto with unknown dimensions {list(shape)}")
    n = math.prod(shape)    # Python ints: exact, and cheaper than numpy for a few dims
    enum = int(proto.dtype)
    content = proto.tensor_content    # read once: each read copies the bytes out

    if enum == _DT.DT_STRING:
        values = unpack_strings(content, n) if content else list(proto.string_val)
        if decode_strings:
            values = [v.decode("utf-8") for v in values]
        out = np.empty(n, dtype=object)
        _fill(out, values, b"" if not decode_strings else "", enum)
        return out.reshape(shape)

    dt = numpy_dtype(enum)
    if content:
        if len(content) != n * dt.itemsize:
            raise ValueError(
                f"tensor_content holds {len(content)} bytes, but a {dtype_name(enum)} tensor of "
                f"shape {list(shape)} needs {n * dt.itemsize}")
        arr = np.frombuffer(content, dtype=dt).copy()
        return _native(arr).reshape(shape)

    field = _FIELD[enum]
    raw = getattr(proto, field)
    if enum == _DT.DT_HALF:
        values = np.asarray(raw, dtype=np.uint16).view(np.float16)
    elif enum in (_DT.DT_COMPLEX64, _DT.DT_COMPLEX128):
        pairs = np.asarray(raw, dtype=np.float64).reshape(-1, 2)
        values = (pairs[:, 0] + 1j * pairs[:, 1]).astype(dt)
    else:
        values = np.asarray(raw, dtype=dt)
    out = np.empty(n, dtype=_native(np.empty(0, dt)).dtype)
    _fill(out, values, 0, enum)
    return out.reshape(shape)


def _fill(out: np.ndarray, values, empty, enum) -> None:
    """Copy ``values`` into ``out``; pad a short list with its last value (TF's behaviour)."""
    n, k = out.shape[0], len(values)
    if k > n:
        raise ValueError(
            f"TensorProto has {k} {dtype_name(enum)} values for a tensor of {n} elements")
    if k == 0:
        out[:] = empty
        return
    if k == n:
        if out.dtype == object:
            out[:] = values if isinstance(values, list) else list(values)
        else:
            out[:] = values
        return
    out[:k] = values
    out[k:] = values[-1]


def _native(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.byteorder in ("<", ">") and (arr.dtype.byteorder == "<") != _LITTLE:
        return arr.astype(arr.dtype.newbyteorder("="))
    return arr
