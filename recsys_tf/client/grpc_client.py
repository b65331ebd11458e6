"""A thin, thread-safe gRPC client for TensorFlow Serving's PredictionService/ModelService.

It speaks to real TF Serving and to ``recsys_tf.server.server.ModelServer`` alike. It keeps
one long-lived channel, converts numpy arrays with ``recsys_tf.wire.codec``, and lets
``grpc.RpcError`` through untouched so callers decide what to retry from ``err.code()``.
"""
from __future__ import annotations

import threading
from typing import Dict, Iterable, Mapping, Optional, Tuple, Union

import grpc
import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from recsys_tf.wire import codec
from recsys_tf.wire.contract import DEFAULT_SIGNATURE, METADATA_SIGNATURE_DEF

__all__ = ["ServingClient"]



def _describe(tensor_infos) -> Dict[str, dict]:
    out = {}
    for name, info in tensor_infos.items():
        if info.dtype == types_pb2.DT_STRING:
            dtype = "string"
        else:
            try:
                dtype = codec.numpy_dtype(info.dtype).newbyteorder("=")
            except TypeError:
                dtype = codec.dtype_name(info.dtype)
        shape = None if info.tensor_shape.unknown_rank else [
            int(d.size) for d in info.tensor_shape.dim]
        out[name] = {"dtype": dtype, "shape": shape}
    return out


def _answered_version(response) -> Optional[int]:
    """The version in a response's ``model_spec``; None when the server left it out."""
    if not response.HasField("model_spec") or not response.model_spec.HasField("version"):
        return None
    return int(response.model_spec.version.value)


def _dtype_matches(array: np.ndarray, expected) -> bool:
    if expected == "string":
        return array.dtype.kind in "OSU"
    if isinstance(expected, str):  # a dtype this client has no numpy type for
        return False
    return array.dtype == expected


class ServingClient:
    """Client for one TF Serving endpoint (``host:port``).

    Args:
      target: ``host:port`` of TF Serving or the bundled ``ModelServer``.
      timeout: default deadline in seconds for every call (a call's ``timeout`` overrides it).
      max_message_mb: send/receive message size limit.
    """

    def __init__(self, target: str, timeout: float = 5.0, max_message_mb: int = 64):
        self.target = target
        self.timeout = float(timeout)
        limit = int(max_message_mb * 1024 * 1024)
        self._channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
            # Ping only while calls are in flight, well above servers' default minimum
            # interval, so a dead peer is noticed without being told "too many pings".
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.enable_retries", 0),
        ])
        self._predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._model_stub = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._lock = threading.Lock()
        self._signatures: Dict[tuple, dict] = {}
        self._closed = False

    # ----------------------------------------------------------------- helpers
    def _deadline(self, timeout: Optional[float]) -> float:
        return self.timeout if timeout is None else float(timeout)

    @staticmethod
    def _spec(spec, model: str, version: Optional[int] = None, label: Optional[str] = None,
              signature: Optional[str] = None) -> None:
        if version is not None and label is not None:
            raise ValueError("give a version or a version label, not both")
        spec.name = model
        if version is not None:
            spec.version.value = int(version)
        elif label is not None:
            spec.version_label = label
        if signature is not None:
            spec.signature_name = signature

    # ----------------------------------------------------------------- calls
    def predict(self, model: str, inputs: Mapping[str, object],
                signature: str = DEFAULT_SIGNATURE, version: Optional[int] = None,
                label: Optional[str] = None, output_filter: Optional[Iterable[str]] = None,
                timeout: Optional[float] = None, decode_strings: bool = False,
                with_version: bool = False
                ) -> Union[Dict[str, np.ndarray], Tuple[Dict[str, np.ndarray], Optional[int]]]:
        """One Predict call: ``{input name: array}`` in, ``{output name: array}`` out.

        String outputs come back as object arrays of ``bytes`` (``str`` with
        ``decode_strings=True``). With ``with_version=True`` it returns ``(outputs, version)``:
        the model version that answered, from the response's ``model_spec`` (None when the
        server does not say). Raises ``grpc.RpcError`` on failure.
        """
        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, model, version, label, signature)
        for name, value in inputs.items():
            codec.to_tensor_proto(value, out=request.inputs[name])
        if output_filter:
            request.output_filter.extend(output_filter)
        response = self._predict_stub.Predict(request, timeout=self._deadline(timeout))
        outputs = {name: codec.to_ndarray(proto, decode_strings=decode_strings)
                   for name, proto in response.outputs.items()}
        if not with_version:
            return outputs
        return outputs, _answered_version(response)

    def metadata(self, model: str, version: Optional[int] = None,
                 timeout: Optional[float] = None, *, label: Optional[str] = None
                 ) -> Dict[str, dict]:
        """All signatures of a model version: ``{signature: description}`` (see ``signature``).

        ``version`` or ``label`` (a version label, e.g. ``"canary"``) picks the version; neither
        means the latest. Each description's ``"version"`` is the version that answered.
        """
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        self._spec(request.model_spec, model, version, label)
        request.metadata_field.append(METADATA_SIGNATURE_DEF)
        response = self._predict_stub.GetModelMetadata(request, timeout=self._deadline(timeout))
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata[METADATA_SIGNATURE_DEF].Unpack(sig_map)
        out = {}
        for name, sig in sig_map.signature_def.items():
            out[name] = {"inputs": _describe(sig.inputs), "outputs": _describe(sig.outputs),
                         "method_name": sig.method_name,
                         "version": response.model_spec.version.value}
        return out

    def signature(self, model: str, signature: str = DEFAULT_SIGNATURE,
                  version: Optional[int] = None, refresh: bool = False,
                  timeout: Optional[float] = None, *, label: Optional[str] = None) -> dict:
        """Describe one signature, cached per (model, version or label, signature).

        Returns ``{"inputs": {name: {"dtype", "shape"}}, "outputs": {...}, "method_name",
        "version"}``; dtype is a numpy dtype or ``"string"``, shape a list with -1 for unknown
        sizes (None for unknown rank). ``refresh=True`` re-reads it (e.g. after a new version).
        ``label`` asks for a labelled version instead of ``version`` (not both).
        Raises ``ValueError`` if the model has no such signature.
        """
        if version is not None and label is not None:
            raise ValueError("give a version or a version label, not both")
        key = (model, version, label, signature)
        if not refresh:
            with self._lock:
                cached = self._signatures.get(key)
            if cached is not None:
                return cached
        signatures = self.metadata(model, version, timeout=timeout, label=label)
        if signature not in signatures:
            public = sorted(k for k in signatures if not k.startswith("__"))
            raise ValueError(f"model {model!r} has no signature {signature!r}; "
                             f"it has {public}")
        found = signatures[signature]
        with self._lock:
            self._signatures[key] = found
        return found

    def clear_cache(self) -> None:
        with self._lock:
            self._signatures.clear()

    def validate(self, model: str, inputs: Mapping[str, object],
                 signature: str = DEFAULT_SIGNATURE, version: Optional[int] = None, *,
                 label: Optional[str] = None) -> None:
        """Check input names, dtypes, ranks and known sizes against the signature (of
        ``version`` or the version labelled ``label``; the latest by default).

        Raises ``ValueError`` naming the offending input; returns None when all is well.
        """
        spec = self.signature(model, signature, version, label=label)["inputs"]
        expected = sorted(spec)
        for name in inputs:
            if name not in spec:
                raise ValueError(f"unknown input {name!r} for {model}/{signature}; "
                                 f"expected {expected}")
        missing = [name for name in expected if name not in inputs]
        if missing:
            raise ValueError(f"missing input(s) {missing} for {model}/{signature}")
        for name in expected:
            array = np.asarray(inputs[name])
            want = spec[name]
            if not _dtype_matches(array, want["dtype"]):
                raise ValueError(f"input {name!r}: dtype {array.dtype} does not match the "
                                 f"signature's {want['dtype']}")
            shape = want["shape"]
            if shape is None:
                continue
            if array.ndim != len(shape):
                raise ValueError(f"input {name!r}: rank {array.ndim} (shape {list(array.shape)}) "
                                 f"does not match the signature's rank {len(shape)} "
                                 f"(shape {shape})")
            for axis, (got, size) in enumerate(zip(array.shape, shape)):
                if size >= 0 and got != size:
                    raise ValueError(f"input {name!r}: size {got} on axis {axis} does not match "
                                     f"the signature's shape {shape}")

    def status(self, model: str, version: Optional[int] = None,
               timeout: Optional[float] = None) -> Dict[int, str]:
        """``{version: state}`` from GetModelStatus, e.g. ``{2: "AVAILABLE"}``."""
        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec, model, version)
        response = self._model_stub.GetModelStatus(request, timeout=self._deadline(timeout))
        names = get_model_status_pb2.ModelVersionStatus.State
        return {int(s.version): names.Name(s.state) for s in response.model_version_status}

    # ----------------------------------------------------------------- lifecycle
    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._channel.close()

    def __enter__(self) -> "ServingClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ServingClient({self.target!r}, timeout={self.timeout})"
