"""numpy <-> TensorProto codec, checked against TensorFlow's own conversions."""
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from recsys_tf.wire import codec

ARRAYS = {
    "float32": np.array([[1.5, -2.25, 3.0], [0.0, 1e-7, -1e30]], dtype=np.float32),
    "float64": np.array([1.0 / 3.0, -2.5e300, 0.0], dtype=np.float64),
    "float16": np.array([0.5, -1.25, 65504.0], dtype=np.float16),
    "int32": np.array([[1, -2], [2**31 - 1, -(2**31)]], dtype=np.int32),
    "int64": np.array([2**62, -(2**63), 0, 7], dtype=np.int64),
    "int8": np.array([-128, 0, 127], dtype=np.int8),
    "int16": np.array([-32768, 5, 32767], dtype=np.int16),
    "uint8": np.array([0, 7, 255], dtype=np.uint8),
    "uint16": np.array([0, 65535], dtype=np.uint16),
    "uint32": np.array([0, 2**32 - 1], dtype=np.uint32),
    "uint64": np.array([0, 2**64 - 1], dtype=np.uint64),
    "bool": np.array([[True, False], [False, True]]),
    "complex64": np.array([1 + 2j, -3.5j], dtype=np.complex64),
    "complex128": np.array([1 + 2j, -3.5j], dtype=np.complex128),
    "bytes": np.array([b"a", b"", b"\xff\x00binary"], dtype=object),
    "scalar_float": np.array(2.5, dtype=np.float32),
    "scalar_int": np.array(-4, dtype=np.int64),
    "scalar_bytes": np.array(b"only", dtype=object),
    "empty_float": np.zeros((0, 3), dtype=np.float32),
    "empty_bytes": np.zeros((2, 0), dtype=object),
}


def _same(a, b):
    assert a.shape == b.shape
    if a.dtype == object or b.dtype == object:
        assert a.dtype == b.dtype == object
        assert a.reshape(-1).tolist() == b.reshape(-1).tolist()
    else:
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_ours_to_tensorflow(name):
    array = ARRAYS[name]
    proto = codec.to_tensor_proto(array)
    assert proto.dtype == tf.as_dtype(array.dtype if array.dtype != object else tf.string)\
        .as_datatype_enum
    _same(tf.make_ndarray(proto), array)


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_tensorflow_to_ours(name):
    array = ARRAYS[name]
    proto = tf.make_tensor_proto(array)
    _same(codec.to_ndarray(proto), array)
    # and through the wire format
    wire = tensor_pb2.TensorProto.FromString(proto.SerializeToString())
    _same(codec.to_ndarray(wire), array)


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_round_trip(name):
    array = ARRAYS[name]
    _same(codec.to_ndarray(codec.to_tensor_proto(array)), array)


def test_numeric_uses_tensor_content():
    proto = codec.to_tensor_proto(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert proto.tensor_content and not proto.float_val
    assert [d.size for d in proto.tensor_shape.dim] == [2, 3]
    assert len(proto.tensor_content) == 24


def test_strings_from_str_and_decode():
    proto = codec.to_tensor_proto(np.array(["héllo", "wörld"]))
    assert proto.dtype == types_pb2.DT_STRING
    assert list(proto.string_val) == ["héllo".encode(), "wörld".encode()]
    raw = codec.to_ndarray(proto)
    assert raw.dtype == object and raw.tolist() == ["héllo".encode(), "wörld".encode()]
    assert codec.to_ndarray(proto, decode_strings=True).tolist() == ["héllo", "wörld"]
    mixed = codec.to_tensor_proto(np.array(["a", b"b"], dtype=object))
    assert list(mixed.string_val) == [b"a", b"b"]
    assert tf.make_ndarray(codec.to_tensor_proto(["x", "yz"])).tolist() == [b"x", b"yz"]


def test_string_fast_path_and_fallback_give_the_same_proto():
    grid = np.array([[b"1001", b"17", b""], [b"", b"", b""]], dtype=object)
    fast = codec.to_tensor_proto(grid)                       # bytes only: one extend
    assert fast.SerializeToString() == tf.make_tensor_proto(grid).SerializeToString()
    mixed = grid.copy()
    mixed[0, 1] = "17"                                       # one str: the element-wise path
    assert codec.to_tensor_proto(mixed).SerializeToString() == fast.SerializeToString()
    with pytest.raises(TypeError, match="holds str or bytes, got int"):
        codec.to_tensor_proto(np.array([b"a", 3], dtype=object))


def test_repeated_rows_go_packed_and_tensorflow_reads_them():
    row = np.array([[b"1001", b"", b"x" * 300, "h\u00e9llo"]], dtype=object)   # 300: 2-byte varint
    view = np.broadcast_to(row, (3, 4))                     # stride 0: one row repeated
    proto = codec.to_tensor_proto(view)
    assert proto.tensor_content and not proto.string_val
    expected = [[b"1001", b"", b"x" * 300, "h\u00e9llo".encode()]] * 3
    assert tf.io.parse_tensor(proto.SerializeToString(), tf.string).numpy().tolist() == expected
    assert codec.to_ndarray(proto).tolist() == expected
    column = codec.to_tensor_proto(np.broadcast_to(np.array([b"u1"], dtype=object), (5,)))
    assert codec.to_ndarray(column).tolist() == [b"u1"] * 5
    # an ordinary array (even with equal rows) still uses string_val
    assert codec.to_tensor_proto(np.array(expected, dtype=object)).string_val


def test_bad_packed_strings_are_refused():
    with pytest.raises(ValueError, match="need"):
        codec.check_packed_strings(b"\x07garbage", 3)
    with pytest.raises(ValueError, match="varint"):
        codec.unpack_strings(b"\x81", 1)
    assert codec.unpack_strings(b"\x02\x00ab", 2) == [b"ab", b""]


def test_fills_a_given_proto_in_place():
    from tensorflow_serving.apis import predict_pb2
    request = predict_pb2.PredictRequest()
    got = codec.to_tensor_proto(ARRAYS["float32"], out=request.inputs["x"])
    assert got is request.inputs["x"]
    _same(tf.make_ndarray(request.inputs["x"]), ARRAYS["float32"])
    codec.to_tensor_proto(ARRAYS["bytes"], out=request.inputs["s"])
    _same(codec.to_ndarray(request.inputs["s"]), ARRAYS["bytes"])


def test_explicit_dtype_casts():
    proto = codec.to_tensor_proto([1, 2, 3], dtype="float32")
    assert proto.dtype == types_pb2.DT_FLOAT
    _same(codec.to_ndarray(proto), np.array([1, 2, 3], np.float32))
    proto = codec.to_tensor_proto([1, 2], dtype=types_pb2.DT_INT32)
    _same(codec.to_ndarray(proto), np.array([1, 2], np.int32))
    proto = codec.to_tensor_proto(["a"], dtype="string")
    assert proto.dtype == types_pb2.DT_STRING
    assert codec.to_tensor_proto([1.0], dtype=tf.float64).dtype == types_pb2.DT_DOUBLE
    with pytest.raises(TypeError):
        codec.to_tensor_proto(np.array([1, None], dtype=object))


def test_big_endian_input_is_normalised():
    array = np.array([1.5, -2.0], dtype=">f4")
    proto = codec.to_tensor_proto(array)
    np.testing.assert_array_equal(tf.make_ndarray(proto), array.astype(np.float32))


@pytest.mark.parametrize("dtype,field,values,expected", [
    (types_pb2.DT_FLOAT, "float_val", [1.5, 2.5, 3.5, 4.5], np.float32),
    (types_pb2.DT_DOUBLE, "double_val", [1.5, 2.5, 3.5, 4.5], np.float64),
    (types_pb2.DT_INT32, "int_val", [1, -2, 3, 4], np.int32),
    (types_pb2.DT_INT64, "int64_val", [2**40, -2, 3, 4], np.int64),
    (types_pb2.DT_BOOL, "bool_val", [True, False, True, True], np.bool_),
    (types_pb2.DT_STRING, "string_val", [b"a", b"b", b"c", b"d"], object),
])
def test_repeated_fields_are_read(dtype, field, values, expected):
    proto = tensor_pb2.TensorProto(dtype=dtype)
    proto.tensor_shape.dim.add().size = 2
    proto.tensor_shape.dim.add().size = 2
    getattr(proto, field).extend(values)
    ours = codec.to_ndarray(proto)
    assert ours.dtype == np.dtype(expected)
    assert ours.shape == (2, 2)
    _same(ours, tf.make_ndarray(proto))
    assert ours.reshape(-1).tolist() == list(values)


def test_half_val_is_read():
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_HALF)
    proto.tensor_shape.dim.add().size = 2
    proto.half_val.extend(np.array([0.5, -3.0], np.float16).view(np.uint16).tolist())
    _same(codec.to_ndarray(proto), tf.make_ndarray(proto))


@pytest.mark.parametrize("dtype,field,value", [
    (types_pb2.DT_FLOAT, "float_val", 0.25),
    (types_pb2.DT_INT64, "int64_val", 9),
    (types_pb2.DT_INT32, "int_val", -3),
    (types_pb2.DT_BOOL, "bool_val", True),
    (types_pb2.DT_STRING, "string_val", b"same"),
])
def test_scalar_broadcast(dtype, field, value):
    proto = tensor_pb2.TensorProto(dtype=dtype)
    proto.tensor_shape.dim.add().size = 2
    proto.tensor_shape.dim.add().size = 3
    getattr(proto, field).append(value)
    ours = codec.to_ndarray(proto)
    assert ours.shape == (2, 3)
    assert all(v == value for v in ours.reshape(-1).tolist())
    _same(ours, tf.make_ndarray(proto))


def test_short_field_pads_with_last_value_like_tensorflow():
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    proto.tensor_shape.dim.add().size = 5
    proto.float_val.extend([1.0, 2.0])
    _same(codec.to_ndarray(proto), tf.make_ndarray(proto))
    assert codec.to_ndarray(proto).tolist() == [1.0, 2.0, 2.0, 2.0, 2.0]


def test_no_values_gives_zeros():
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64)
    proto.tensor_shape.dim.add().size = 3
    _same(codec.to_ndarray(proto), np.zeros(3, np.int64))


def test_malformed_protos_raise():
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    proto.tensor_shape.dim.add().size = 3
    proto.tensor_content = b"\x00" * 8  # two floats for three slots
    with pytest.raises(ValueError, match="tensor_content"):
        codec.to_ndarray(proto)
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    proto.tensor_shape.dim.add().size = 1
    proto.float_val.extend([1.0, 2.0])
    with pytest.raises(ValueError):
        codec.to_ndarray(proto)
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_RESOURCE)
    with pytest.raises(TypeError):
        codec.to_ndarray(proto)


def test_dtype_name():
    assert codec.dtype_name(types_pb2.DT_FLOAT) == "float"
    assert codec.dtype_name(types_pb2.DT_STRING) == "string"
    assert codec.dtype_name(types_pb2.DT_INT64) == "int64"
    assert codec.dtype_name(types_pb2.DT_QINT8) == "DT_QINT8"
    assert codec.dtype_name(9999) == "dtype(9999)"
    for enum in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_INT32,
                 types_pb2.DT_INT64, types_pb2.DT_BOOL, types_pb2.DT_STRING):
        assert codec.dtype_name(enum) == tf.dtypes.as_dtype(enum).name.replace(
            "float32", "float").replace("float64", "double")
