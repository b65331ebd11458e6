"""Running a signature of a loaded version, with TF Serving's request checks.

Two paths: ``_FastSignature`` runs a signature straight from the request's TensorProtos
(unbatched, or batched across requests through ``_ProtoBatch``), and the numpy path
(``SignatureRunner.execute``) serves REST and the signatures the fast path cannot trace.
Inputs are checked as TF Serving checks them (names, dtypes, shapes, sizes) before anything
is decoded, and output filters are resolved. ``SignatureRunner`` is that part of
``ModelServer``.
"""
from __future__ import annotations

import logging
import threading
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from recsys_tf.wire import codec
from recsys_tf.server.batching import BatchExecutor, split_outputs
from recsys_tf.wire.errors import CODE_BY_VALUE, ServingError, invalid
from recsys_tf.server.loader import DEFAULT_SIGNATURE, _Version

# The whole server logs under one name, whichever module a message comes from.
log = logging.getLogger("recsys_tf.server.server")


_ALL_ROWS = 2 ** 31 - 1  # a slice end past every batch: all rows
# One signature's batch functions warm at a time: they hold the interpreter lock while they
# trace, so warming several at once would only slow the requests being served meanwhile.
_WARMING = threading.Lock()


def _shape_str(dims) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


def _flat_call(concrete):
    """``concrete(*tensors)`` for functions called only with tensors that match their input
    signature: the call goes straight to the function's flat inputs, skipping the binding and
    checking of structured arguments (45-90 us of a 10-row DeepFM call's 300-430 here).
    Falls back to the plain call where TensorFlow lacks ``_call_flat`` (pinned: 2.20)."""
    call_flat = getattr(concrete, "_call_flat", None)
    if call_flat is None:
        return concrete

    def call(*tensors):
        return call_flat(list(tensors), concrete.captured_inputs)

    return call


class _FastSignature:
    """A signature called straight from request protos.

    Unbatched, one TensorFlow function parses the serialized input TensorProtos
    (``ParseTensor``, shapes enforced with ``EnsureShape``), runs the signature and serializes
    the outputs, so no tensor passes through numpy or Python objects. Batched, a function
    takes the serialized inputs of every request in the batch, parses and concatenates them,
    pads to the batch size asked for and runs the signature once, all in one graph. Batches
    of up to ``UNROLLED[-1]`` requests are parsed with one ``ParseTensor`` per request and
    input, by a function traced once per bucket of ``UNROLLED`` (the batch filled up to its
    bucket with copies of its smallest request, cut off again after parsing); larger ones by a
    ``while_loop`` over requests into ``TensorArray``s, which costs more (sixteen 10-row DeepFM
    requests: 3.6-3.9 ms of CPU against 2.3-2.4) and is the only way until ``warm_batches``
    has made the others. The numpy path
    (``ModelServer.execute``) serves REST and signatures these cannot trace.
    """

    UNROLLED = (1, 2, 4, 8, 16, 32)

    def __init__(self, fn, sig):
        self.inputs = sorted(sig.inputs)
        self.outputs = sorted(sig.outputs)
        self._fn = fn
        self._dtypes = [tf.dtypes.as_dtype(sig.inputs[n].dtype) for n in self.inputs]
        self._shapes = [tf.TensorShape(sig.inputs[n].tensor_shape) for n in self.inputs]
        inputs, outputs, n_in = self.inputs, self.outputs, len(self.inputs)
        dtypes, shapes = self._dtypes, self._shapes

        # autograph=False: straight-line graph code (the loop below is tf.while_loop), so no
        # source parsing at load time, which runs in the server's loading thread while other
        # threads may parse too (CPython 3.11's ast module is not safe for that)
        @tf.function(input_signature=[tf.TensorSpec([n_in], tf.string)], autograph=False)
        def run(serialized):
            tensors = {name: tf.ensure_shape(tf.io.parse_tensor(serialized[i], dtypes[i]),
                                             shapes[i]) for i, name in enumerate(inputs)}
            result = fn(**tensors)
            return [tf.io.serialize_tensor(result[key]) for key in outputs]

        self.fn = _flat_call(run.get_concrete_function())
        self.batchable = n_in > 0 and all(s.rank is not None and s.rank >= 1 for s in shapes)
        self._batch_loop = None
        self._batch_unrolled: Dict[int, object] = {}  # requests -> warmed batch function
        self.warmed_sizes: Tuple[int, ...] = ()  # batch sizes (rows) the model has run at
        if not self.batchable:
            return

        @tf.function(input_signature=[tf.TensorSpec([None, n_in], tf.string),
                                      tf.TensorSpec([], tf.int32),
                                      tf.TensorSpec([], tf.int32)], autograph=False)
        def run_loop(serialized, rows, pad_to):
            count = tf.shape(serialized)[0]
            arrays = tuple(tf.TensorArray(dtypes[i], size=count, infer_shape=False,
                                          element_shape=tf.TensorShape([None]).concatenate(
                                              shapes[i][1:])) for i in range(n_in))

            def body(t, *arrays):
                return (t + 1,) + tuple(arrays[i].write(t, tf.io.parse_tensor(
                    serialized[t, i], dtypes[i])) for i in range(n_in))

            looped = tf.while_loop(lambda t, *_: t < count, body, (tf.constant(0),) + arrays)
            return self._run_rows([looped[1 + i].concat() for i in range(n_in)], rows, pad_to)

        self._batch_loop = _flat_call(run_loop.get_concrete_function())

    def _run_rows(self, values, rows, pad_to):
        """The signature on the parsed inputs' first ``rows`` rows, padded to ``pad_to`` rows
        by repeating the first."""
        tensors = {}
        for i, name in enumerate(self.inputs):
            value = tf.ensure_shape(values[i][:rows], self._shapes[i])
            missing = tf.maximum(pad_to - tf.shape(value)[0], 0)
            tensors[name] = tf.concat([value, tf.repeat(value[:1], missing, axis=0)], 0)
        result = self._fn(**tensors)
        return [result[key] for key in self.outputs]

    def _trace_unrolled(self, count: int):
        """The batch function for exactly ``count`` requests."""
        n_in, dtypes = len(self.inputs), self._dtypes

        @tf.function(input_signature=[tf.TensorSpec([count, n_in], tf.string),
                                      tf.TensorSpec([], tf.int32),
                                      tf.TensorSpec([], tf.int32)], autograph=False)
        def run_unrolled(serialized, rows, pad_to):
            values = []
            for i in range(n_in):
                parts = [tf.io.parse_tensor(serialized[t, i], dtypes[i]) for t in range(count)]
                values.append(tf.concat(parts, 0) if count > 1 else parts[0])
            return self._run_rows(values, rows, pad_to)

        return _flat_call(run_unrolled.get_concrete_function())

    def warm_batches(self, sizes: Sequence[int] = (), stop=None) -> None:
        """Trace and run every bucket's batch function, then let batches use it. Until then
        they take the ``while_loop``: tracing and a first run (which optimises the graph)
        cost a few tenths of a second per bucket, so a loading version does not wait for
        them (the server runs this in a thread of its own). The first run is on made-up
        rows (zeros, empty strings), one per request; a bucket whose run fails is used
        untried.

        Then the model runs once at each batch size in ``sizes`` (rows; the made-up row
        repeated): the first run of a model at a batch size it has not run before is slow -
        in the server, xDeepFM's first 1,600-row batch took 459-687 ms against 129-134 ms
        after, its first 800-row one 342 against 88 - so the sizes batches will have (the
        allowed batch sizes, the largest batch) are paid for here rather than by the
        requests of the first such batch. The sizes run are kept in ``warmed_sizes``.

        ``stop`` (a ``threading.Event``, optional): when set, the warming ends after the
        bucket or size in hand (a stopping server does not wait for the rest)."""
        if not self.batchable:
            return
        with _WARMING:
            example = self._warm_each_bucket(stop)
            self._warm_sizes(example, sizes, stop)

    def _example(self) -> List[bytes]:
        """Made-up serialized inputs: one row (or the fixed size) of zeros / empty strings;
        unknown dimensions 1, scalars a zero."""
        example = []
        for dtype, shape in zip(self._dtypes, self._shapes):
            dims = [] if shape.rank == 0 else [1 if d is None else d for d in
                                               (shape.as_list() if shape.rank else [None])]
            value = tf.fill(dims, "") if dtype == tf.string else tf.zeros(dims, dtype)
            example.append(tf.io.serialize_tensor(value).numpy())
        return example

    def warm_once(self) -> bool:
        """Run the unbatched function once on made-up inputs (``_example``), so the first
        request does not pay for the function's first run (TensorFlow optimises a function's
        graph then: a few tenths of a second for a ranker). False when that run fails (e.g.
        the signature refuses zeros); the signature still serves."""
        try:
            self.fn(tf.constant(self._example(), dtype=tf.string))
            return True
        except Exception as exc:  # noqa: BLE001 -- only a warm-up missed
            log.debug("signature not run before use: %s", exc)
            return False

    def _warm_each_bucket(self, stop=None) -> List[bytes]:
        example = self._example()
        for count in self.UNROLLED:
            if stop is not None and stop.is_set():
                break
            if count in self._batch_unrolled:
                continue
            fn = self._trace_unrolled(count)
            try:
                fn(tf.constant([example] * count, dtype=tf.string), tf.constant(count),
                   tf.constant(0))
            except Exception as exc:  # noqa: BLE001 -- only a warm-up missed
                log.debug("batch function for %d requests not run before use: %s", count, exc)
            self._batch_unrolled[count] = fn
        return example

    def _warm_sizes(self, example: List[bytes], sizes: Sequence[int], stop=None) -> None:
        fn, one = self._batch_unrolled.get(1), tf.constant(1)
        for size in sorted({int(s) for s in sizes if int(s) > 1}):
            if fn is None or (stop is not None and stop.is_set()):
                break
            try:
                fn(tf.constant([example], dtype=tf.string), one, tf.constant(size))
            except Exception as exc:  # noqa: BLE001 -- only a warm-up missed
                log.debug("batch size %d not run before use: %s", size, exc)
                continue
            self.warmed_sizes += (size,)

    def run_batch(self, payloads: List[List[bytes]], rows: int, pad_to: int,
                  sizes: Optional[List[int]] = None) -> Dict:
        """Outputs (numpy) of the requests' serialized inputs run as one batch: their first
        ``rows`` rows (``_ALL_ROWS``: all), padded to ``pad_to``. ``sizes`` (the requests'
        rows, when known) picks the smallest request to fill a bucket with."""
        count = len(payloads)
        bucket = next((b for b in self.UNROLLED if b >= count), None)
        unrolled = self._batch_unrolled.get(bucket)
        try:
            if unrolled is None:
                result = self._batch_loop(tf.constant(payloads, dtype=tf.string),
                                          tf.constant(rows, tf.int32),
                                          tf.constant(pad_to, tf.int32))
            else:
                filler = payloads[sizes.index(min(sizes)) if sizes else 0]
                filled = payloads + [filler] * (bucket - count)
                result = unrolled(tf.constant(filled, dtype=tf.string),
                                  tf.constant(rows, tf.int32), tf.constant(pad_to, tf.int32))
        except tf.errors.OpError as exc:
            raise _op_error(exc) from None
        return {key: value.numpy() for key, value in zip(self.outputs, result)}

    def serialize(self, protos) -> List[bytes]:
        return [protos[name].SerializeToString() for name in self.inputs]

    def __call__(self, protos) -> Dict[str, bytes]:
        """Unbatched: serialized output TensorProtos by output name."""
        try:
            result = self.fn(tf.constant(self.serialize(protos), dtype=tf.string))
        except tf.errors.OpError as exc:
            raise _op_error(exc) from None
        return {key: value.numpy() for key, value in zip(self.outputs, result)}


class _ProtoBatch(BatchExecutor):
    """Batch executor over serialized requests (see ``_FastSignature``)."""

    def __init__(self, fast: _FastSignature):
        self.fast = fast

    def execute_one(self, payload):
        return self.fast.run_batch([payload], _ALL_ROWS, 0)

    def execute(self, payloads, sizes, target):
        rows = sum(sizes)
        return split_outputs(self.fast.run_batch(payloads, rows, target, sizes), sizes,
                             max(target, rows))


def _batch_size(dims: Dict[str, List[int]]) -> Optional[int]:
    """The inputs' shared first dimension, or None (nothing to batch on)."""
    sizes = {shape[0] if shape else None for shape in dims.values()}
    return sizes.pop() if len(sizes) == 1 else None


class _Expected(NamedTuple):
    """What one input of a signature must be, read once from its ``TensorInfo``."""

    dtype: int
    shape: Optional[List[int]]  # None: any rank
    rank: int
    fixed: Optional[tuple]  # (axis, size) of the known dimensions; None: any rank
    is_string: bool
    itemsize: Optional[int]  # bytes an element in tensor_content (0 for strings)
    field: Optional[str]  # repeated field holding the values without tensor_content
    per: int  # values an element in that field
    error: str  # why the codec cannot read this dtype (itemsize or field None)


def _expected_inputs(sig) -> Dict[str, _Expected]:
    """Each input of a SignatureDef, by name in sorted order, as ``_check_tensor`` needs it."""
    out = {}
    for key in sorted(sig.inputs):
        info = sig.inputs[key]
        dtype = info.dtype
        shape = None if info.tensor_shape.unknown_rank else [d.size for d in
                                                              info.tensor_shape.dim]
        is_string = dtype == codec.dtype_enum("string")
        field, per, itemsize, error = None, 1, None, ""
        try:
            field, per = codec.value_field(dtype)
            itemsize = 0 if is_string else codec.numpy_dtype(dtype).itemsize
        except TypeError as exc:
            error = str(exc)
        out[key] = _Expected(
            dtype, shape, len(shape or ()),
            None if shape is None else tuple((i, d) for i, d in enumerate(shape) if d >= 0),
            is_string, itemsize, field, per, error)
    return out


def _op_error(exc) -> ServingError:
    return ServingError(CODE_BY_VALUE.get(exc.error_code, grpc.StatusCode.UNKNOWN), exc.message)


def _tensor_to_proto(value, proto) -> None:
    """Fill ``proto`` with an eager tensor or numpy array."""
    if hasattr(value, "numpy"):
        if value.dtype == tf.string:
            proto.ParseFromString(tf.io.serialize_tensor(value).numpy())
            return
        value = value.numpy()
    proto.Clear()
    codec.to_tensor_proto(np.asarray(value), out=proto)


class SignatureRunner:
    """``ModelServer``'s running of signatures: Predict on a resolved version, input checks."""

    @staticmethod
    def signature_of(ver: _Version, name: str):
        """(SignatureDef, function) of a loaded version; FAILED_PRECONDITION when absent."""
        name = name or DEFAULT_SIGNATURE
        sig = ver.signature_defs.get(name)
        fn = ver.functions.get(name)
        if sig is None or fn is None:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"Serving signature key \"{name}\" not found.")
        return sig, fn

    # ----------------------------------------------------------------- Predict
    def _run_predict(self, ver: _Version, request, batch: bool = True):
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        sig, fn = self.signature_of(ver, name)
        expected = ver.checks.get(name)
        if expected is None:
            expected = ver.checks[name] = _expected_inputs(sig)
        dims = self._check_inputs(sig, request.inputs, expected)
        outputs = self._output_names(sig, request.output_filter)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = ver.model
        response.model_spec.version.value = ver.version
        response.model_spec.signature_name = name
        scheduler = self._scheduler if batch else None
        fast = self._fast(ver, name)
        if fast is not None and (scheduler is None or not fast.batchable):
            serialized = fast(request.inputs)
            for key in outputs:
                response.outputs[key].ParseFromString(serialized[key])
            return response
        size = _batch_size(dims) if fast is not None and dims else None
        if size is not None and not self.batching.pad_variable_length_inputs and (
                size <= self.batching.execution_size):
            # batching: the batch thread parses, concatenates and runs; rows come back here
            inner = tuple(tuple(dims[k][1:]) for k in fast.inputs)
            result = scheduler.submit((ver.uid, name, "proto", inner), _ProtoBatch(fast),
                                      fast.serialize(request.inputs), size)
        else:
            arrays = {key: self._decode_tensor(key, request.inputs[key]) for key in sig.inputs}
            result = self.execute(ver, name, arrays, outputs, batch=batch)
        for key in outputs:
            _tensor_to_proto(result[key], response.outputs[key])
        return response

    @staticmethod
    def _fast(ver: _Version, name: str) -> Optional[_FastSignature]:
        fast = ver.fast.get(name, False)
        if fast is not False:
            return fast
        with ver.fast_lock:
            if name not in ver.fast:
                try:
                    ver.fast[name] = _FastSignature(ver.functions[name],
                                                    ver.signature_defs[name])
                except Exception as exc:  # an unusual signature: the numpy path serves it
                    log.info("model %s version %d signature %s: direct path unavailable "
                             "(%s); using the numpy path", ver.model, ver.version, name, exc)
                    ver.fast[name] = None
            return ver.fast[name]

    def execute(self, ver: _Version, signature: str, arrays: Dict[str, np.ndarray],
                outputs: List[str], batch: bool = True) -> Dict[str, np.ndarray]:
        """Run a signature on validated inputs (through the batch scheduler when batching)."""
        sig, fn = self.signature_of(ver, signature)
        for key, array in arrays.items():
            self._check_shape(key, array, sig.inputs[key])

        def run(inputs):
            return self._call(fn, sig, inputs, outputs)

        scheduler = self._scheduler
        if batch and scheduler is not None:
            return scheduler.run((ver.uid, signature, tuple(outputs)), run, arrays)
        return run(arrays)

    @staticmethod
    def _call(fn, sig, arrays, outputs) -> Dict[str, np.ndarray]:
        try:
            tensors = {key: tf.constant(array, dtype=tf.dtypes.as_dtype(sig.inputs[key].dtype))
                       for key, array in arrays.items()}
            result = fn(**tensors)
        except tf.errors.OpError as exc:
            raise ServingError(CODE_BY_VALUE.get(exc.error_code, grpc.StatusCode.UNKNOWN),
                               exc.message) from None
        except (TypeError, ValueError) as exc:
            raise invalid(str(exc)) from None
        out = {}
        for key in outputs:
            if key not in result:
                raise ServingError(grpc.StatusCode.UNKNOWN, "Predict internal error: the "
                                   f"signature did not produce output {key!r}")
            value = result[key]
            out[key] = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
        return out

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

    def _check_inputs(self, sig, inputs, expected) -> Dict[str, List[int]]:
        """TF Serving's input checks, made on the protos without decoding any values; returns
        each input's shape. ``expected``: ``_expected_inputs(sig)``, made once a signature."""
        if len(inputs) != len(expected) or not all(key in inputs for key in expected):
            self._name_error(sig, inputs)
        return {key: self._check_tensor(key, inputs[key], want)
                for key, want in expected.items()}

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

    def _check_tensor(self, key: str, proto, want: _Expected) -> List[int]:
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
                              f"{_shape_str(dims)}")
            n *= d
        if n > self.max_message_bytes:
            raise invalid(f"tensor parsing error: {key}: shape {_shape_str(dims)} holds {n} "
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
                    f"but a {codec.dtype_name(dtype)} tensor of shape {_shape_str(dims)} "
                    f"needs {n * want.itemsize}")
        elif want.field is None:  # a dtype the codec has no layout for
            raise invalid(f"tensor parsing error: {key}: {want.error}")
        else:
            count = len(getattr(proto, want.field))
            if count > n * want.per:
                raise invalid(f"tensor parsing error: {key}: the TensorProto has "
                              f"{count // want.per} {codec.dtype_name(dtype)} values for "
                              f"a tensor of {n} elements")
        fixed = want.fixed
        if fixed is not None and (len(dims) != want.rank or any(
                dims[i] != size for i, size in fixed)):
            raise invalid(f"input '{key}': shape {_shape_str(dims)} is incompatible with the "
                          f"signature's shape {_shape_str(want.shape)}")
        return dims

    def _decode_tensor(self, key: str, proto) -> np.ndarray:
        try:
            return codec.to_ndarray(proto)
        except (TypeError, ValueError, OverflowError) as exc:
            raise invalid(f"tensor parsing error: {key}: {exc}") from None

    @staticmethod
    def _check_shape(key: str, array: np.ndarray, info) -> None:
        shape = info.tensor_shape
        if shape.unknown_rank:
            return
        want = [d.size for d in shape.dim]
        if len(want) != array.ndim or any(w >= 0 and w != g for w, g in zip(want, array.shape)):
            raise invalid(f"input '{key}': shape {_shape_str(array.shape)} is incompatible "
                          f"with the signature's shape {_shape_str(want)}")
