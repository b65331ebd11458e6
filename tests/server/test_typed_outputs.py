"""Outputs in TF Serving's default layout: the typed fields, read back by the client's codec.

TF Serving answers with ``Tensor::AsProtoField`` (``float_val``, ``int64_val``, ...) unless it
runs with ``--enable_serialization_as_tensor_content``; ``codec.to_tensor_proto(...,
tensor_content=False)`` writes that layout, and ``codec.to_ndarray`` reads it back exactly.
"""
import numpy as np
import pytest
import tensorflow as tf

from recsys_tf.wire import codec

CASES = [
    (np.array([[1.5, -2.25], [3.0, 0.0]], np.float32), "float_val"),
    (np.array([1e300, -0.5]), "double_val"),
    (np.array([1.5, -2.0, 65504.0], np.float16), "half_val"),
    (np.array([-(2**62), 7], np.int64), "int64_val"),
    (np.array([-(2**31), 5], np.int32), "int_val"),
    (np.array([-128, 127], np.int8), "int_val"),
    (np.array([0, 255], np.uint8), "int_val"),
    (np.array([2**32 - 1], np.uint32), "uint32_val"),
    (np.array([2**64 - 1], np.uint64), "uint64_val"),
    (np.array([True, False]), "bool_val"),
    (np.array([1 + 2j, -3.5j], np.complex64), "scomplex_val"),
    (np.array([b"a", b"\xff\x00", b""], dtype=object), "string_val"),
]


@pytest.mark.parametrize("array,field", CASES, ids=[c[1] + str(c[0].dtype) for c in CASES])
def test_typed_fields_round_trip_and_match_tensorflow(array, field):
    proto = codec.to_tensor_proto(array, tensor_content=False)
    assert not proto.tensor_content and len(getattr(proto, field)) > 0
    back = codec.to_ndarray(proto)
    assert back.dtype == (object if array.dtype == object else array.dtype)
    np.testing.assert_array_equal(back, array)
    # TensorFlow reads the same values from it
    np.testing.assert_array_equal(tf.make_ndarray(proto), array.astype(
        object if array.dtype == object else array.dtype))


def test_tensor_content_stays_the_default_for_requests():
    proto = codec.to_tensor_proto(np.array([1.0, 2.0], np.float32))
    assert proto.tensor_content and not proto.float_val
