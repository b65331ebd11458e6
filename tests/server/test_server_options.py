"""``ServerOptions``: built from TF Serving's flags or from keywords, checked once; what the
parts of the server are handed (session thread pools, Unix socket, output layout)."""
import argparse
import os

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from recsys_tf.server.flags import add_server_arguments
from recsys_tf.server.options import ServerOptions
from recsys_tf.wire import codec

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HALF_PLUS_TWO = os.path.join(os.path.dirname(ROOT), "shared", "tfserving_suite", "servables",
                             "tensorflow", "testdata", "saved_model_half_plus_two_cpu")


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    return parser.parse_args(list(argv))


def test_from_args_carries_tf_serving_flags(tmp_path):
    options = ServerOptions.from_args(_args(
        "--model_base_path", str(tmp_path), "--model_name", "m", "--port", "0",
        "--grpc_socket_path", str(tmp_path / "s.sock"), "--enable_serialization_as_tensor_content",
        "--tensorflow_session_parallelism", "3", "--tensorflow_inter_op_parallelism", "2",
        "--grpc_channel_arguments", "grpc.so_reuseaddr=1,grpc.x=abc"))
    assert options.model_name == "m" and options.port == 0
    assert options.grpc_socket_path == str(tmp_path / "s.sock")
    assert options.enable_serialization_as_tensor_content is True
    config = options.session_config()
    assert config.intra_op_parallelism_threads == 3   # from the session flag
    assert config.inter_op_parallelism_threads == 2   # its own flag wins
    assert options.channel_arguments == [("grpc.so_reuseaddr", 1), ("grpc.x", "abc")]
    defaults = ServerOptions.from_args(_args("--model_base_path", str(tmp_path)))
    assert defaults.enable_serialization_as_tensor_content is False   # TF Serving's default
    assert defaults.grpc_socket_path is None and defaults.tags == ("serve",)
    assert not defaults.session_config().intra_op_parallelism_threads


@pytest.mark.parametrize("keywords,match", [
    ({}, "model_base_path"),
    ({"model_config_file": "x", "model_name": "m"}, "either"),
    ({"model_base_path": "x", "max_message_bytes": 0}, "max_message_bytes"),
    ({"model_base_path": "x", "batching_parameters": "b.config"}, "enable_batching"),
    ({"model_base_path": "x", "grpc_channel_arguments": "novalue"}, "key=value"),
])
def test_bad_options_name_the_value(keywords, match):
    with pytest.raises(ValueError, match=match):
        ServerOptions(**keywords)


def test_grpc_on_a_unix_socket(tmp_path):
    if not os.path.isdir(HALF_PLUS_TWO):
        pytest.skip(f"TF Serving's test data not found at {HALF_PLUS_TWO}")
    from recsys_tf.server.server import ModelServer

    path = str(tmp_path / "serving.sock")
    options = ServerOptions(model_name="default", model_base_path=HALF_PLUS_TWO, port=0,
                            grpc_socket_path=path)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    codec.to_tensor_proto(np.array([[4.0]], np.float32), out=request.inputs["x"])
    with ModelServer(options):
        with grpc.insecure_channel(f"unix:{path}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            y = stub.Predict(request, timeout=30).outputs["y"]
    assert list(y.float_val) == [4.0]


@pytest.mark.parametrize("check", [False, True])
def test_signature_method_name_check_flag_reaches_regress(check):
    """``--enable_signature_method_name_check``: Regress on half_plus_two's classify signature
    is refused for its method name only when the check is on (TF Serving's default: off, and
    then refused for its outputs)."""
    if not os.path.isdir(HALF_PLUS_TWO):
        pytest.skip(f"TF Serving's test data not found at {HALF_PLUS_TWO}")
    from tensorflow.core.example import example_pb2
    from tensorflow_serving.apis import regression_pb2

    from recsys_tf.server.server import ModelServer

    flags = ["--enable_signature_method_name_check"] if check else []
    options = ServerOptions.from_args(_args("--model_base_path", HALF_PLUS_TWO, "--model_name",
                                            "default", "--port", "0", *flags))
    assert options.enable_signature_method_name_check is check
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = "classify_x_to_y"
    example = example_pb2.Example()
    example.features.feature["x"].float_list.value.append(2.0)
    request.input.example_list.examples.add().CopyFrom(example)
    with ModelServer(options) as srv, grpc.insecure_channel(srv.target) as channel:
        with pytest.raises(grpc.RpcError) as info:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Regress(request,
                                                                              timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details()
    assert details.startswith("Expected") is check, details        # the method name's check
    assert ("No regression outputs found" in details) is not check, details
