"""The client reads both output layouts TF Serving answers in.

TF Serving writes a Predict output into the typed repeated fields (``float_val``,
``int64_val``, ``string_val``, ...) by default, and into ``tensor_content`` (numbers as packed
little-endian bytes, strings as TensorFlow's packed list: every length as a varint, then the
bytes) when started with ``--enable_serialization_as_tensor_content``. Here real
``PredictResponse`` messages are built both ways - checked against TensorFlow's own reader,
``tf.io.parse_tensor`` - and go through the client's decoding path over gRPC: a canned
PredictionService for every dtype the client reads, and a proxy that re-lays out the bundled
server's answers for whole ``recommend`` calls.
"""
from concurrent import futures

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from recsys_tf.client import ClientOptions, Recommender, ServingClient
from recsys_tf.wire.contract import (
    EMBEDDING_OUTPUT,
    ITEM_IDS_OUTPUT,
    PROBABILITY_OUTPUT,
    QUERY_SIGNATURE,
    SCORES_OUTPUT,
)

LAYOUTS = ("typed", "tensor_content")
# dtype -> (DataType, the typed field TF Serving fills without tensor_content)
TYPED = {np.dtype(np.float32): (types_pb2.DT_FLOAT, "float_val"),
         np.dtype(np.float64): (types_pb2.DT_DOUBLE, "double_val"),
         np.dtype(np.int32): (types_pb2.DT_INT32, "int_val"),
         np.dtype(np.int64): (types_pb2.DT_INT64, "int64_val"),
         np.dtype(object): (types_pb2.DT_STRING, "string_val")}


def _varint(n):
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def laid_out(arr, layout):
    """``arr`` as a TensorProto in ``layout``, written here independently of the codec."""
    arr = np.asarray(arr)
    enum, field = TYPED[arr.dtype]
    proto = tensor_pb2.TensorProto(dtype=enum)
    for size in arr.shape:
        proto.tensor_shape.dim.add().size = size
    flat = arr.reshape(-1).tolist()
    if layout == "typed":
        getattr(proto, field).extend(flat)
    elif arr.dtype == object:   # TensorFlow's packed string list
        proto.tensor_content = b"".join(map(_varint, map(len, flat))) + b"".join(flat)
    else:
        proto.tensor_content = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    return proto


# what the client reads: ranker probabilities, retrieval scores and ids (int64 or string),
# query embeddings, and a scalar
OUTPUTS = {
    PROBABILITY_OUTPUT: np.array([[0.1], [0.25], [0.5], [0.999]], np.float32),
    SCORES_OUTPUT: np.array([[3.5, 1.25, -0.5, -2.0, 1e-30]], np.float32),
    EMBEDDING_OUTPUT: np.random.default_rng(0).normal(size=(1, 8)).astype(np.float32),
    "ids_int64": np.array([[7, 2 ** 40, -3, 0, 12]], np.int64),
    ITEM_IDS_OUTPUT: np.array([[b"i42", b"", "caf\u00e9".encode(), b"x" * 200, b"i7"]],
                              dtype=object),
    "scores_float64": np.array([0.1, -1e300, 2.5], np.float64),
    "k": np.array(5, np.int32),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_test_protos_are_what_tensorflow_reads(layout):
    """The protos these tests send are valid TensorFlow tensors holding the arrays."""
    from recsys_tf.backend import tf

    for name, arr in OUTPUTS.items():
        proto = laid_out(arr, layout)
        assert bool(proto.tensor_content) == (layout == "tensor_content"), name
        got = tf.io.parse_tensor(proto.SerializeToString(), tf.as_dtype(proto.dtype)).numpy()
        assert got.shape == arr.shape, name
        np.testing.assert_array_equal(got, arr)


class Canned(prediction_service_pb2_grpc.PredictionServiceServicer):
    """A PredictionService that answers every Predict with ``OUTPUTS`` in the layout named by
    the request's model name."""

    def Predict(self, request, context):
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        for name, arr in OUTPUTS.items():
            response.outputs[name].CopyFrom(laid_out(arr, request.model_spec.name))
        return response


def _serve(servicer):
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    return srv, f"127.0.0.1:{port}"


def test_serving_client_decodes_both_layouts_alike():
    srv, target = _serve(Canned())
    try:
        with ServingClient(target, timeout=30) as client:
            got = {layout: client.predict(layout, {}) for layout in LAYOUTS}
            text = {layout: client.predict(layout, {}, decode_strings=True)[ITEM_IDS_OUTPUT]
                    for layout in LAYOUTS}
    finally:
        srv.stop(None)
    for layout in LAYOUTS:
        assert set(got[layout]) == set(OUTPUTS)
        for name, want in OUTPUTS.items():
            out = got[layout][name]
            assert out.dtype == want.dtype and out.shape == want.shape, (layout, name)
            np.testing.assert_array_equal(out, want)
        assert text[layout].tolist() == [[v.decode() for v in OUTPUTS[ITEM_IDS_OUTPUT][0]]]
        assert all(type(v) is bytes for v in got[layout][ITEM_IDS_OUTPUT].reshape(-1))


class Relayout(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Forwards to a server and lays every Predict output out again as ``layout["now"]``
    says (None: as the server answered); notes the layouts it sent."""

    def __init__(self, upstream, layout):
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(upstream))
        self.layout, self.sent = layout, []

    def Predict(self, request, context):
        from recsys_tf.backend import tf

        response = self.stub.Predict(request, timeout=30)
        layout = self.layout["now"]
        if layout is not None:
            for name, proto in response.outputs.items():
                arr = tf.io.parse_tensor(proto.SerializeToString(),
                                         tf.as_dtype(proto.dtype)).numpy()
                proto.CopyFrom(laid_out(arr, layout))
                self.sent.append((name, layout, bool(proto.tensor_content)))
        return response

    def GetModelMetadata(self, request, context):
        return self.stub.GetModelMetadata(request, timeout=30)


@pytest.fixture(scope="module")
def relayout(server):
    layout = {"now": None}
    servicer = Relayout(server, layout)
    srv, target = _serve(servicer)
    yield target, layout, servicer
    srv.stop(None)


def _answer(res):
    assert res.degraded is None, res.degraded
    return [(r.item_id, r.retrieval_score, r.ranking_score, r.final_score) for r in res.items]


@pytest.mark.parametrize("signature, ranker", [("serving_default", "deepfm"),
                                               (QUERY_SIGNATURE, None)])
def test_recommend_is_the_same_in_both_layouts(relayout, server, tables, user, signature,
                                                ranker):
    """String ids and float scores (a retrieval signature), float probabilities (the ranker),
    a float embedding (the query signature, searched locally): the same answer whichever
    layout the server writes, and the same as the bundled server's own."""
    target, layout, servicer = relayout
    u, ctx = user
    options = ClientOptions(retrieval_signature=signature)
    kw = dict(k=6, context=ctx, n_candidates=15, diversity=0.2)
    with Recommender(server, tables, ranker=ranker, timeout=30, options=options) as rec:
        want = _answer(rec.recommend(u, **kw))
    for name in LAYOUTS:
        layout["now"] = name
        servicer.sent.clear()
        with Recommender(target, tables, ranker=ranker, timeout=30, options=options) as rec:
            assert _answer(rec.recommend(u, **kw)) == want, name
        outputs = {n for n, _, _ in servicer.sent}
        expected = {EMBEDDING_OUTPUT} if signature == QUERY_SIGNATURE else {ITEM_IDS_OUTPUT,
                                                                             SCORES_OUTPUT}
        assert outputs == expected | ({PROBABILITY_OUTPUT} if ranker else set())
        assert {(lay, content) for _, lay, content in servicer.sent} == {
            (name, name == "tensor_content")}


def test_recommend_is_the_same_against_a_bundled_server_in_each_mode(trained, server, tables,
                                                                      user, tiny_synthetic):
    """The session's server answers in the typed fields (TF Serving's default); a second one
    started with ``enable_serialization_as_tensor_content`` answers in ``tensor_content``: the
    client gets the same recommendation from both."""
    from recsys_tf.server import ModelServer
    from recsys_tf.wire import codec

    u, ctx = user
    kw = dict(k=6, context=ctx, n_candidates=15, diversity=0.2)
    with Recommender(server, tables, ranker="deepfm", timeout=30) as rec:
        typed = _answer(rec.recommend(u, **kw))
    model = trained["deepfm"][1]
    rows = tiny_synthetic.feature_set.arrays(tiny_synthetic.test.head(3), model.features)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "deepfm"
    for name, values in rows.items():
        codec.to_tensor_proto(values, out=request.inputs[name])
    packed_server = ModelServer(model_base_path=trained["root"], host="127.0.0.1", port=0,
                                enable_serialization_as_tensor_content=True)
    packed_server.start()
    try:
        for srv_target, packed in ((server, False), (packed_server.target, True)):
            with grpc.insecure_channel(srv_target) as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                out = stub.Predict(request, timeout=30).outputs[PROBABILITY_OUTPUT]
            assert bool(out.tensor_content) == packed and bool(out.float_val) != packed
        with Recommender(packed_server.target, tables, ranker="deepfm", timeout=30) as rec:
            assert _answer(rec.recommend(u, **kw)) == typed
    finally:
        packed_server.stop()
