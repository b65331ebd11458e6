"""Running a signature of a loaded version, as TF Serving's SavedModel bundle runs it.

A signature is run on the version's session (``recsys_tf.server.loader.Version``) by a
callable made from ``CallableOptions``: fed by the tensor names of the SignatureDef's inputs
and fetching the tensor names of the outputs asked for, one callable per (signature, outputs),
made on first use and kept. Shapes are checked by the graph, not by the shape a signature
declares (a placeholder declared ``[None, 1]`` takes a ``[3]`` input, as in TF Serving);
what the graph cannot compute comes back with TensorFlow's code (INVALID_ARGUMENT for bad
input), never as INTERNAL and never taking the server down.

Before anything runs, a Predict request is checked as TF Serving checks it: input names
against the signature's keys, each input's dtype, the TensorProto itself (negative or unknown
dimensions, values that do not fit the shape), and the output filter. Outputs are answered in
the typed fields (``float_val``, ``int64_val``, ``string_val``, ...) unless the server was
started with ``--enable_serialization_as_tensor_content``.

With batching (``BatchingOptions``), requests for the same version, signature and outputs
share one session run: the batch scheduler concatenates their numpy inputs along the first
dimension, runs once and hands each its rows.

Example::

    runner = Runner()
    outputs = runner.run(version, "serving_default", {"x": np.array([1.0, 2.0], np.float32)})
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, NamedTuple, Optional

import grpc
import numpy as np
from tensorflow.core.protobuf import config_pb2
from tensorflow_serving.apis import predict_pb2

import tensorflow as tf

from recsys_tf.server.batching import BatchingOptions, BatchScheduler
from recsys_tf.server.flags import DEFAULT_MAX_MESSAGE_BYTES
from recsys_tf.server.loader import Version
from recsys_tf.wire import codec
from recsys_tf.wire.contract import DEFAULT_SIGNATURE
from recsys_tf.wire.errors import CODE_BY_VALUE, ServingError, invalid

# The whole server logs under one name, whichever module a message comes from.
log = logging.getLogger("recsys_tf.server.server")


class _Expected(NamedTuple):
    """What one input of a signature must be, read once from its ``TensorInfo``."""

    dtype: int
    is_string: bool
    itemsize: Optional[int]  # bytes an element in tensor_content (0 for strings)
    field: Optional[str]  # repeated field holding the values without tensor_content
    per: int  # values an element in that field
    error: str  # why the codec cannot read this dtype (itemsize or field None)


def _expected_inputs(sig) -> Dict[str, _Expected]:
    """Each input of a SignatureDef, by key in sorted order, as ``_check_tensor`` needs it."""
    out = {}
    for key in sorted(sig.inputs):
        dtype = sig.inputs[key].dtype
        is_string = dtype == codec.dtype_enum("string")
        field, per, itemsize, error = None, 1, None, ""
        try:
            field, per = codec.value_field(dtype)
            itemsize = 0 if is_string else codec.numpy_dtype(dtype).itemsize
        except TypeError as exc:
            error = str(exc)
        out[key] = _Expected(dtype, is_string, itemsize, field, per, error)
    return out


def _op_error(exc: tf.errors.OpError) -> ServingError:
    code = CODE_BY_VALUE.get(exc.error_code, grpc.StatusCode.UNKNOWN)
    if code == grpc.StatusCode.INTERNAL:
        # what the graph cannot compute on these inputs is the request's fault
        code = grpc.StatusCode.INVALID_ARGUMENT
    return ServingError(code, exc.message)


def _made_up(info) -> Optional[np.ndarray]:
    """One made-up row for a TensorInfo (zeros or empty strings; unknown dimensions 1, unknown
    rank a vector of one); None for a dtype numpy cannot hold."""
    shape = info.tensor_shape
    dims = [1] if shape.unknown_rank else [1 if d.size < 0 else d.size for d in shape.dim]
    try:
        dtype = codec.numpy_dtype(info.dtype)
    except TypeError:
        return None
    if dtype == object:
        out = np.empty(dims, dtype=object)
        out[...] = b""
        return out
    return np.zeros(dims, dtype=dtype)


class Runner:
    """Runs a version's signatures on its session; checks Predict requests as TF Serving does.

    Args:
      batching: ``BatchingOptions`` to batch requests across callers (default None: none).
      max_message_bytes: the most elements one input tensor may claim (default 64 Mi).
      tensor_content: answer Predict in ``tensor_content`` instead of the typed fields
        (default False, as TF Serving).
      on_batch: called with (requests, rows, padded rows) for each batch run (metrics).
    """

    def __init__(self, batching: Optional[BatchingOptions] = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 tensor_content: bool = False,
                 on_batch: Optional[Callable[[int, int, int], None]] = None):
        self.batching = batching
        self.max_message_bytes = int(max_message_bytes)
        self.tensor_content = bool(tensor_content)
        self.on_batch = on_batch
        self.scheduler: Optional[BatchScheduler] = None

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the batch threads (with batching)."""
        if self.batching is not None and self.scheduler is None:
            self.scheduler = BatchScheduler(self.batching, on_batch=self.on_batch)

    def stop(self) -> None:
        """Stop the batch threads; queued requests are answered UNAVAILABLE."""
        scheduler, self.scheduler = self.scheduler, None
        if scheduler is not None:
            scheduler.stop()

    # ----------------------------------------------------------------- running
    @staticmethod
    def signature(version: Version, name: str):
        """The SignatureDef ``name`` (empty: ``serving_default``) of a version;
        FAILED_PRECONDITION when it has none of that name."""
        name = name or DEFAULT_SIGNATURE
        sig = version.signature_defs.get(name)
        if sig is None:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"Serving signature key \"{name}\" not found.")
        return sig

    def run(self, version: Version, signature_name: str, inputs: Dict[str, np.ndarray],
            output_keys: Optional[List[str]] = None, batch: bool = True
            ) -> Dict[str, np.ndarray]:
        """Run a signature: ``inputs`` keyed by the SignatureDef's input keys, the outputs
        ``output_keys`` (default: all) keyed by output key. Raises ``ServingError`` with TF
        Serving's codes (FAILED_PRECONDITION for an unknown signature, INVALID_ARGUMENT for
        inputs that do not match it or that the graph cannot compute). With batching (and
        ``batch``), the run is shared with other requests for the same outputs."""
        name = signature_name or DEFAULT_SIGNATURE
        sig = self.signature(version, name)
        if set(inputs) != set(sig.inputs):
            self._name_error(sig, inputs)
        outputs = self._output_names(sig, output_keys or [])
        arrays = {key: np.asarray(value) for key, value in inputs.items()}
        fn = self._callable(version, name, sig, outputs)

        def run(feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
            return self._call(fn, feeds, outputs)

        scheduler = self.scheduler
        if batch and scheduler is not None:
            return scheduler.run((version.uid, name, tuple(outputs)), run, arrays)
        return run(arrays)

    def predict(self, version: Version, request, batch: bool = True):
        """Answer a ``PredictRequest`` on a resolved version; raises ``ServingError``."""
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        sig = self.signature(version, name)
        expected = version.checks.get(name)
        if expected is None:
            expected = version.checks[name] = _expected_inputs(sig)
        self._check_inputs(sig, request.inputs, expected)
        outputs = self._output_names(sig, request.output_filter)
        arrays = {key: self._decode_tensor(key, request.inputs[key]) for key in expected}
        result = self.run(version, name, arrays, outputs, batch=batch)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = version.model
        response.model_spec.version.value = version.version
        response.model_spec.signature_name = name
        for key in outputs:
            codec.to_tensor_proto(result[key], out=response.outputs[key],
                                  tensor_content=self.tensor_content)
        return response

    def warm(self, version: Version, signature_name: str) -> bool:
        """Run a signature once on made-up rows, so its first request does not pay for the
        session's first run of it (the graph is optimised then). False when that run fails
        (e.g. the signature refuses zeros); the signature still serves."""
        sig = version.signature_defs[signature_name]
        feeds = {key: _made_up(info) for key, info in sig.inputs.items()}
        if any(value is None for value in feeds.values()):
            return False
        try:
            self.run(version, signature_name, feeds, batch=False)
            return True
        except Exception as exc:  # noqa: BLE001 -- only a warm-up missed
            log.debug("model %s version %d signature %s not run before use: %s",
                      version.model, version.version, signature_name, exc)
            return False

    @staticmethod
    def _callable(version: Version, name: str, sig, outputs: List[str]):
        """The session callable feeding ``sig``'s inputs (sorted by key) and fetching
        ``outputs``: made once per (signature, outputs) and kept on the version."""
        key = (name, tuple(outputs))
        found = version.callables.get(key)
        if found is not None:
            return found
        with version.lock:
            found = version.callables.get(key)
            if found is None:
                options = config_pb2.CallableOptions()
                options.feed.extend(sig.inputs[k].name for k in sorted(sig.inputs))
                options.fetch.extend(sig.outputs[k].name for k in outputs)
                try:
                    # a callable made from CallableOptions, as TF Serving runs a session: it
                    # takes any shape the graph can compute (Session.run would refuse shapes
                    # the placeholders' declared shapes forbid)
                    fn = version.session._make_callable_from_options(options)
                except tf.errors.OpError as exc:
                    raise _op_error(exc) from None
                found = version.callables[key] = (sorted(sig.inputs), fn)
        return found

    @staticmethod
    def _call(fn, feeds: Dict[str, np.ndarray], outputs: List[str]) -> Dict[str, np.ndarray]:
        keys, run = fn
        try:
            result = run(*[feeds[k] for k in keys])
        except tf.errors.OpError as exc:
            raise _op_error(exc) from None
        except (TypeError, ValueError) as exc:
            raise invalid(str(exc)) from None
        return dict(zip(outputs, result))

    # ----------------------------------------------------------------- request checks
    @staticmethod
    def _output_names(sig, output_filter) -> List[str]:
        if not output_filter:
            return list(sig.outputs)
        seen = set()
        for alias in output_filter:
            if alias not in sig.outputs:
                raise invalid(f"output tensor alias not found in signature: {alias} Outputs "
                              f"expected to be in the set {{{','.join(sorted(sig.outputs))}}}.")
            if alias in seen:
                raise invalid(f"duplicate output tensor alias: {alias}")
            seen.add(alias)
        return list(output_filter)

    def _check_inputs(self, sig, inputs, expected) -> None:
        """TF Serving's input checks, made on the protos without decoding any values.
        ``expected``: ``_expected_inputs(sig)``, made once a signature."""
        if len(inputs) != len(expected) or not all(key in inputs for key in expected):
            self._name_error(sig, inputs)
        for key, want in expected.items():
            self._check_tensor(key, inputs[key], want)

    @staticmethod
    def _name_error(sig, inputs) -> None:
        expected = sorted(sig.inputs)
        sent = sorted(inputs)
        if len(sent) != len(expected):
            extra = [k for k in sent if k not in sig.inputs]
            missing = [k for k in expected if k not in inputs]
            raise invalid(
                f"input size does not match signature: {len(sent)}!={len(expected)} "
                f"len({{{','.join(sent)}}}) != len({{{','.join(expected)}}}). Sent extra: "
                f"{{{','.join(extra)}}}. Missing but required: {{{','.join(missing)}}}.")
        for key in sent:
            if key not in sig.inputs:
                raise invalid(f"input tensor alias not found in signature: {key}. Inputs "
                              f"expected to be in the set {{{','.join(expected)}}}.")

    def _check_tensor(self, key: str, proto, want: _Expected) -> None:
        dtype = proto.dtype
        if dtype != want.dtype:
            raise invalid(f"input '{key}': expects {codec.dtype_name(want.dtype)} but "
                          f"{codec.dtype_name(dtype)} is provided")
        shape = proto.tensor_shape
        if shape.unknown_rank:
            raise invalid(f"tensor parsing error: {key}: the tensor has unknown rank")
        dims = [d.size for d in shape.dim]
        n = 1
        for d in dims:
            if d < 0:
                raise invalid(f"tensor parsing error: {key}: negative dimension in shape "
                              f"{codec.shape_text(dims)}")
            n *= d
        if n > self.max_message_bytes:
            raise invalid(f"tensor parsing error: {key}: shape {codec.shape_text(dims)} holds {n} "
                          f"elements, more than this server accepts ({self.max_message_bytes})")
        content = proto.tensor_content
        if content and want.is_string:       # TensorFlow's packed layout
            try:
                codec.check_packed_strings(content, n)
            except ValueError as exc:
                raise invalid(f"tensor parsing error: {key}: {exc}") from None
        elif content and want.itemsize is None:
            raise invalid(f"tensor parsing error: {key}: {want.error}")
        elif content:
            if len(content) != n * want.itemsize:
                raise invalid(
                    f"tensor parsing error: {key}: tensor_content holds {len(content)} bytes, "
                    f"but a {codec.dtype_name(dtype)} tensor of shape {codec.shape_text(dims)} "
                    f"needs {n * want.itemsize}")
        elif want.field is None:  # a dtype the codec has no layout for
            raise invalid(f"tensor parsing error: {key}: {want.error}")
        else:
            count = len(getattr(proto, want.field))
            if count > n * want.per:
                raise invalid(f"tensor parsing error: {key}: the TensorProto has "
                              f"{count // want.per} {codec.dtype_name(dtype)} values for "
                              f"a tensor of {n} elements")

    @staticmethod
    def _decode_tensor(key: str, proto) -> np.ndarray:
        try:
            return codec.to_ndarray(proto)
        except (TypeError, ValueError, OverflowError) as exc:
            raise invalid(f"tensor parsing error: {key}: {exc}") from None
