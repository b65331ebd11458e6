"""TF Serving's REST API (and Prometheus metrics) for ``ModelServer``, on the standard library.

Routes, bodies, answers and error texts follow TF Serving's HTTP front end:

* ``GET /v1/models/NAME[/versions/N | /labels/L]`` -- GetModelStatus as JSON
  (``{"model_version_status": [{"version": "2", "state": "AVAILABLE", "status": {...}}]}``);
* ``GET /v1/models/NAME[...]/metadata`` -- ``{"model_spec": {...}, "metadata":
  {"signature_def": {"signature_def": {...}}}}``;
* ``POST /v1/models/NAME[...]:predict`` with ``{"signature_name": ..., "instances": [...]}``
  (row format: one entry per example, an object of named inputs or a bare value when the
  signature has one input; answered with ``{"predictions": [...]}``) or ``{"inputs": ...}``
  (columnar: an object of whole tensors; answered with ``{"outputs": ...}``). Strings may be
  sent as ``{"b64": "..."}``; outputs whose name ends in ``_bytes`` come back that way;
* ``POST /v1/models/NAME[...]:classify`` / ``:regress`` with ``{"signature_name": ...,
  "context": {feature: value}, "examples": [{feature: value}, ...]}``: turned into a
  ``ClassificationRequest`` / ``RegressionRequest`` of ``tf.Example``s by
  ``recsys_tf.server.inference``'s JSON helpers, answered by the server's inference service,
  as ``{"results": [[[label, score], ...], ...]}`` (classify) or ``{"results": [value, ...]}``
  (regress);
* ``GET /monitoring/prometheus/metrics`` (path configurable) -- request counts and latency.

Errors are ``{"error": "<message>"}`` with TF Serving's HTTP mapping of the status code:
INVALID_ARGUMENT and FAILED_PRECONDITION 400, NOT_FOUND 404, UNAVAILABLE 503, UNIMPLEMENTED
501, ... A malformed path under ``/v1/`` is 400 ("Malformed request: ..."), any other path
404, and a body over the server's size limit 413 (TF Serving has no such limit).

Connections are served by at most ``rest_api_num_threads`` threads at once; TLS is used when
the server has a TLS configuration.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

import grpc
import numpy as np
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
)

from recsys_tf.server import inference
from recsys_tf.wire import codec
from recsys_tf.wire.contract import DEFAULT_SIGNATURE, METADATA_SIGNATURE_DEF
from recsys_tf.wire.errors import ServingError, invalid

log = logging.getLogger(__name__)

_PREDICT_RE = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r":(classify|regress|predict)")
_STATUS_RE = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?")
_V1_RE = re.compile(r"(?i)/v1/.*")

_DT = types_pb2
_INT_RANGES = {
    _DT.DT_INT8: (-2**7, 2**7 - 1), _DT.DT_INT16: (-2**15, 2**15 - 1),
    _DT.DT_INT32: (-2**31, 2**31 - 1), _DT.DT_UINT8: (0, 2**8 - 1),
    _DT.DT_INT64: (-2**63, 2**63 - 1), _DT.DT_UINT32: (0, 2**32 - 1),
    _DT.DT_UINT64: (0, 2**64 - 1),
}
_FLOAT_EXACT = {_DT.DT_FLOAT: 2**24 - 1, _DT.DT_DOUBLE: 2**53 - 1}
# --------------------------------------------------------------------------- JSON -> arrays
def _jstr(value) -> str:
    text = json.dumps(value, allow_nan=True)
    return text if len(text) <= 200 else text[:200] + "..."


def _type_error(value, dtype) -> ServingError:
    return invalid(f"JSON Value: {_jstr(value)} Type: {inference.json_type_name(value)} is not of expected type: "
                   f"{codec.dtype_name(dtype)}")


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _scalar(value, dtype):
    """One JSON leaf as a Python value of the tensor's dtype (TF Serving's AddValueToTensor)."""
    if isinstance(value, dict):
        if dtype != _DT.DT_STRING:
            raise _type_error(value, dtype)
        if not _is_b64(value):
            raise invalid(f"JSON Value: {_jstr(value)} not formatted correctly for base64 data")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise invalid("Unable to base64 decode") from None
    if dtype == _DT.DT_STRING:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode("utf-8", "surrogatepass")
    if dtype == _DT.DT_BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(value, dtype)
    if dtype in _FLOAT_EXACT:
        if isinstance(value, int) and abs(value) > _FLOAT_EXACT[dtype]:
            raise invalid(f"Cannot convert JSON value: {value} to {codec.dtype_name(dtype)} "
                          "without loss of precision.")
        if isinstance(value, float) and dtype == _DT.DT_FLOAT and math.isfinite(value) and \
                abs(value) > 3.4028234663852886e38:
            raise invalid(f"Cannot convert JSON value: {value} to float without loss of "
                          "precision.")
        return value
    if dtype in _INT_RANGES:
        lo, hi = _INT_RANGES[dtype]
        if not isinstance(value, int) or not lo <= value <= hi:
            raise _type_error(value, dtype)
        return value
    raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                       f"Conversion of JSON Value: {_jstr(value)} to type: "
                       f"{codec.dtype_name(dtype)}")


def _dense_shape(value) -> List[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _flatten(value, level: int, shape: List[int], dtype, out: list) -> None:
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid(f"JSON Value: {_jstr(value)} found at incorrect level: {level + 1} "
                          f"in the JSON DOM. Expected at level: {rank}")
        out.append(_scalar(value, dtype))
        return
    if level >= rank:
        raise invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid(f"Encountered list at unexpected size: {len(value)} at level: {level} "
                      f"expected size: {shape[level]}")
    for item in value:
        _flatten(item, level + 1, shape, dtype, out)


def json_to_array(value, dtype) -> np.ndarray:
    """A (nested) JSON value as an array of the signature's dtype, checked as TF Serving does."""
    shape = _dense_shape(value)
    flat: list = []
    _flatten(value, 0, shape, dtype, flat)
    if dtype == _DT.DT_STRING:
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
    else:
        array = np.asarray(flat, dtype=codec.numpy_dtype(dtype).newbyteorder("="))
    return array.reshape(shape)


def _instances_to_arrays(instances: list, infos) -> Dict[str, np.ndarray]:
    """Row format: one element per example, stacked along a new first dimension."""
    names = sorted(infos)
    first = instances[0]
    if not (isinstance(first, dict) and not _is_b64(first)) and len(infos) > 1:
        raise invalid("instances is a plain list, but expecting list of objects as multiple "
                      "input tensors required as per tensorinfo_map")
    objects = isinstance(first, dict) and not _is_b64(first)
    columns: Dict[str, list] = {n: [] for n in names}
    shapes: Dict[str, List[int]] = {}
    for i, element in enumerate(instances):
        is_object = isinstance(element, dict) and not _is_b64(element)
        if objects and not is_object:
            raise invalid(f"Expecting object but got list at item {i} of input list")
        if not objects and is_object:
            raise invalid(f"Expecting value/list but got object at item {i} of input list")
        items = element.items() if objects else [(names[0], element)]
        for key, value in items:
            if key not in infos:
                raise invalid(f"Failed to process element: {i} key: {key} of 'instances' list. "
                              f"Error: JSON object: does not have named input: {key}")
            try:
                shape = _dense_shape(value)
                flat: list = []
                _flatten(value, 0, shape, infos[key].dtype, flat)
            except ServingError as exc:
                where = f"key: {key} " if objects else ""
                raise ServingError(exc.code, f"Failed to process element: {i} {where}of "
                                   f"'instances' list. Error: {exc.message}") from None
            if key in shapes and shapes[key] != shape:
                raise invalid(f"Failed to process element: {i} key: {key} of 'instances' list. "
                              f"Error: Expecting shape {codec.shape_text(shapes[key])} but got: "
                              f"{codec.shape_text(shape)}")
            shapes[key] = shape
            columns[key].extend(flat)
        if objects and set(element) != set(names):
            raise invalid(f"Failed to process element: {i} of 'instances' list. JSON object: "
                          f"{_jstr(element)} keys must be equal to: {','.join(names)}")
    arrays = {}
    for key in names:
        dtype = infos[key].dtype
        shape = [len(instances)] + shapes[key]
        if dtype == _DT.DT_STRING:
            array = np.empty(len(columns[key]), dtype=object)
            array[:] = columns[key]
        else:
            array = np.asarray(columns[key], dtype=codec.numpy_dtype(dtype).newbyteorder("="))
        arrays[key] = array.reshape(shape)
    return arrays


def _inputs_to_arrays(inputs, infos) -> Dict[str, np.ndarray]:
    """Columnar format: whole tensors, an object of them or a bare one for a single input."""
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(infos) > 1:
            raise invalid("inputs is a plain value/list, but expecting an object as multiple "
                          "input tensors required as per tensorinfo_map")
        name = next(iter(infos))
        return {name: json_to_array(inputs, infos[name].dtype)}
    arrays = {}
    for name in sorted(infos):
        if name not in inputs:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = json_to_array(inputs[name], infos[name].dtype)
    return arrays


# --------------------------------------------------------------------------- arrays -> JSON
def _leaves(array: np.ndarray, name: str) -> list:
    flat = array.reshape(-1)
    if array.dtype == np.float32:
        return [float(str(v)) for v in flat]  # float32's shortest text, as TF Serving writes
    if array.dtype.kind in "OSU":
        if name.endswith("_bytes"):
            return [{"b64": base64.b64encode(v if isinstance(v, bytes) else str(v).encode())
                     .decode("ascii")} for v in flat]
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    if array.dtype.kind == "f":
        return [float(v) for v in flat.astype(np.float64)]
    return flat.tolist()


def _nest(flat: list, shape: Tuple[int, ...]):
    if not shape:
        return flat[0]
    if len(shape) == 1:
        return list(flat)
    step = int(np.prod(shape[1:], dtype=np.int64)) if shape[1:] else 1
    return [_nest(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def _json_tensor(array: np.ndarray, name: str):
    return _nest(_leaves(array, name), array.shape)


def outputs_to_json(outputs: Dict[str, np.ndarray], row_format: bool) -> dict:
    if not outputs:
        raise invalid("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if not row_format:
        if len(names) == 1:
            return {"outputs": _json_tensor(outputs[names[0]], names[0])}
        return {"outputs": {n: _json_tensor(outputs[n], n) for n in names}}
    batch = None
    for n in names:
        if outputs[n].ndim == 0:
            raise invalid(f"Tensor name: {n} has no shape information ")
        size = outputs[n].shape[0]
        if batch is not None and size != batch:
            raise invalid(f"Tensor name: {n} has inconsistent batch size: {size} expecting: "
                          f"{batch}")
        batch = size
    rows = {n: _json_tensor(outputs[n], n) for n in names}
    if len(names) == 1:
        return {"predictions": rows[names[0]]}
    return {"predictions": [{n: rows[n][i] for n in names} for i in range(batch)]}


# --------------------------------------------------------------------------- the server
class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address, handler, slots: int, ssl_context, family):
        self.address_family = family
        self._slots = threading.BoundedSemaphore(max(1, slots))
        self._ssl_context = ssl_context
        super().__init__(address, handler)

    def get_request(self):
        sock, addr = super().get_request()
        if self._ssl_context is not None:
            sock = self._ssl_context.wrap_socket(sock, server_side=True,
                                                 do_handshake_on_connect=False)
        return sock, addr

    def process_request(self, request, client_address):
        self._slots.acquire()  # at most rest_api_num_threads connections at once
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class RestServer:
    """The REST front end (``rest_api_port``), a thread serving HTTP.

    Args:
      options: the ``ServerOptions`` (host, ``rest_api_port``, threads, timeout, TLS, body
        size limit, metrics path).
      registry: resolves model specs and names.
      runner: runs the signatures ``:predict`` asks for.
      prediction, model_service: the ``PredictionService`` (metadata; classify and regress go
        to its inference service) and ``ModelService`` (status).
      metrics: the ``Metrics`` requests are counted in and rendered from.
    """

    def __init__(self, options, registry, runner, prediction, model_service, metrics):
        self.registry = registry
        self.runner = runner
        self.prediction = prediction
        self.model_service = model_service
        self.metrics = metrics
        self.metrics_path = options.metrics_path
        self.max_message_bytes = options.max_message_bytes
        context = None
        if options.ssl_config is not None:
            context = _ssl_context(options.ssl_config)
        host = options.host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        handler = type("Handler", (_Handler,), {"rest": self,
                                                "timeout": options.rest_api_timeout})
        self.httpd = _HTTPServer((host.strip("[]"), int(options.rest_api_port or 0)), handler,
                                 options.rest_api_num_threads, context, family)
        self._thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={
            "poll_interval": 0.2}, name="rest-api", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.httpd.server_close()

    # ----------------------------------------------------------------- dispatch
    def handle(self, method: str, raw_path: str, body: Optional[bytes]) -> Tuple[int, str, bytes]:
        """(HTTP status, content type, body) for one request."""
        path = urlsplit(raw_path).path
        if self.metrics_path and path == self.metrics_path:
            if method != "GET":
                return self._error(invalid(f"Unexpected method {method} for {path}"))
            return 200, "text/plain; version=0.0.4", self.metrics.render().encode()
        if not _V1_RE.fullmatch(path):
            return 404, "application/json", json.dumps(
                {"error": f"Not found: {method} {path}"}).encode()
        start = time.perf_counter()
        api, model, code = "predict", "", grpc.StatusCode.OK
        try:
            api, model, answer = self._v1(method, path, body)
            return 200, "application/json", json.dumps(answer, allow_nan=True).encode()
        except ServingError as exc:
            code = exc.code
            log.warning("REST %s %s: %s: %s", method, path[:200], exc.code.name,
                        exc.message[:300])
            return self._error(exc)
        except Exception as exc:  # never let a request take the server down
            code = grpc.StatusCode.UNKNOWN
            log.exception("unexpected error while serving REST %s %s", method, path[:200])
            return self._error(ServingError(code, f"{type(exc).__name__}: {exc}"))
        finally:
            self.metrics.record_request(self.registry.served_name(model), api, "REST", code.name,
                                          (time.perf_counter() - start) * 1e6)

    @staticmethod
    def _error(exc: ServingError) -> Tuple[int, str, bytes]:
        return exc.http_status, "application/json", json.dumps({"error": exc.message}).encode()

    def _v1(self, method: str, path: str, body: Optional[bytes]):
        malformed = invalid(f"Malformed request: {method} {path}")
        if method == "POST":
            match = _PREDICT_RE.fullmatch(path)
            if not match:
                raise malformed
            spec = self._spec(*match.groups()[:3])
            verb = match.group(4).lower()
            if verb == "classify":
                return "classify", spec.name, self._classify(spec, body)
            if verb == "regress":
                return "regress", spec.name, self._regress(spec, body)
            return "predict", spec.name, self._predict(spec, body)
        if method == "GET":
            match = _STATUS_RE.fullmatch(path)
            if not match:
                raise malformed
            name, version, label, sub = match.groups()
            if not name:
                raise invalid("Missing model name in request.")
            spec = self._spec(name, version, label)
            if sub:
                return "GetModelMetadata", spec.name, self._metadata(spec)
            return "GetModelStatus", spec.name, self._status(spec)
        raise malformed

    @staticmethod
    def _spec(name, version, label) -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=unquote(name))
        if version is not None and label is not None:
            raise invalid(f"Both model version ({version}) and model version label ({label}) "
                          "cannot be supplied.")
        if version is not None:
            number = int(version)
            if number >= 2**63:
                raise invalid(f"Failed to convert version: {version} to numeric.")
            spec.version.value = number
        if label is not None:
            spec.version_label = unquote(label)
        return spec

    def _status(self, spec) -> dict:
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=spec)
        response = self.model_service.get_model_status(request)
        return json_format.MessageToDict(response, always_print_fields_with_no_presence=True)

    def _metadata(self, spec) -> dict:
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=spec, metadata_field=[METADATA_SIGNATURE_DEF])
        response = self.prediction.get_model_metadata(request)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata[METADATA_SIGNATURE_DEF].Unpack(sig_map)
        options = dict(always_print_fields_with_no_presence=True,
                       preserving_proto_field_name=True)
        return {"model_spec": json_format.MessageToDict(response.model_spec, **options),
                "metadata": {METADATA_SIGNATURE_DEF: json_format.MessageToDict(sig_map, **options)}}

    @staticmethod
    def _document(body: Optional[bytes]) -> dict:
        """The request body as a JSON object, with TF Serving's parse errors."""
        if not body:
            raise invalid("JSON Parse error: The document is empty")
        try:
            doc = json.loads(body)
        except UnicodeDecodeError as exc:
            raise invalid(f"JSON Parse error: Invalid encoding in string. at offset: "
                          f"{exc.start}") from None
        except json.JSONDecodeError as exc:
            raise invalid(f"JSON Parse error: {exc.msg} at offset: {exc.pos}") from None
        except RecursionError:
            raise invalid("JSON Parse error: the document is nested too deeply") from None
        if not isinstance(doc, dict):
            raise invalid(f"JSON Value: {_jstr(doc)} Is not object")
        return doc

    @staticmethod
    def _url_spec(spec) -> tuple:
        """(model, version, label) of a URL's model spec, as the JSON helpers take them."""
        version = spec.version.value if spec.WhichOneof("version_choice") == "version" \
            else None
        return spec.name, version, spec.version_label or None

    def _classify(self, spec, body: Optional[bytes]) -> dict:
        request = inference.classification_request_from_json(body or b"",
                                                             *self._url_spec(spec))
        return inference.classify_response_to_json(self.prediction.classify(request))

    def _regress(self, spec, body: Optional[bytes]) -> dict:
        request = inference.regression_request_from_json(body or b"", *self._url_spec(spec))
        return inference.regress_response_to_json(self.prediction.regress(request))

    def _predict(self, spec, body: Optional[bytes]) -> dict:
        doc = self._document(body)
        signature = doc.get("signature_name", "")
        if not isinstance(signature, str):
            raise invalid(f"JSON Value: {_jstr(doc)} not formatted correctly. 'signature_name' "
                          "key must be a string value.")
        ver = self.registry.resolve(spec)
        name = signature or DEFAULT_SIGNATURE
        if name not in ver.signature_defs:
            raise invalid(f"Serving signature name: \"{name}\" not found in signature def")
        sig = ver.signature_defs[name]
        infos = sig.inputs
        if not infos:
            raise invalid(f"Failed to get input map for signature: {signature or 'DEFAULT'}")
        has_instances, has_inputs = "instances" in doc, "inputs" in doc
        if has_instances and has_inputs:
            raise invalid(f"JSON Value: {_jstr(doc)} Not formatted correctly expecting only one "
                          "of 'inputs' or 'instances' keys to exist ")
        if has_instances:
            instances = doc["instances"]
            if not isinstance(instances, list):
                raise invalid(f"JSON Value: {_jstr(doc)} Excepting 'instances' to be an "
                              "list/array")
            if not instances:
                raise invalid(f"JSON Value: {_jstr(doc)} No values in 'instances' array")
            arrays = _instances_to_arrays(instances, infos)
        elif has_inputs:
            arrays = _inputs_to_arrays(doc["inputs"], infos)
        else:
            raise invalid("Missing 'inputs' or 'instances' key")
        outputs = self.runner.run(ver, name, arrays)
        return outputs_to_json(outputs, row_format=has_instances)


def _ssl_context(ssl_config) -> ssl.SSLContext:
    import os
    import tempfile

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # load_cert_chain reads files: write the PEM text to private temporary files.
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        for path, text in ((cert, ssl_config.server_cert), (key, ssl_config.server_key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        context.load_cert_chain(cert, key)
    if ssl_config.custom_ca:
        context.load_verify_locations(cadata=ssl_config.custom_ca)
        if ssl_config.client_verify:
            context.verify_mode = ssl.CERT_REQUIRED
    return context


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "recsys-tf-serving"
    rest: RestServer = None  # set on the per-server subclass
    timeout = 30.0

    def setup(self):
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def handle(self):
        try:
            super().handle()
        except (ssl.SSLError, ConnectionError, socket.timeout, TimeoutError):
            self.close_connection = True

    def log_message(self, format, *args):  # noqa: A002  (requests are logged by the handler)
        log.debug("REST %s - %s", self.address_string(), format % args)

    def _read_body(self) -> Tuple[Optional[bytes], Optional[str]]:
        limit = self.rest.max_message_bytes
        encoding = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in encoding:
            parts, total = [], 0
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";")[0].strip() or b"0", 16)
                except ValueError:
                    return None, "malformed chunked body"
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > limit:
                    return None, f"Request body exceeds the limit of {limit} bytes"
                parts.append(self.rfile.read(size))
                self.rfile.readline(1024)
            return b"".join(parts), None
        length = self.headers.get("Content-Length")
        if length is None:
            return b"", None
        try:
            n = int(length)
        except ValueError:
            return None, "bad Content-Length"
        if n < 0:
            return None, "bad Content-Length"
        if n > limit:
            # Read (and drop) a moderately oversized body so the client sees the 413 rather
            # than a reset connection; anything larger is cut off.
            left = n if n <= 2 * limit + (16 << 20) else 0
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 20))
                if not chunk:
                    break
                left -= len(chunk)
            return None, f"Request body of {n} bytes exceeds the limit of {limit} bytes"
        return self.rfile.read(n), None

    def _serve(self, method: str):
        body, problem = (None, None)
        if method in ("POST", "PUT", "PATCH"):
            body, problem = self._read_body()
        if problem is not None:
            self.close_connection = True  # the unread body makes the connection unusable
            status = 413 if "exceeds" in problem else 400
            self._reply(status, "application/json", json.dumps({"error": problem}).encode())
            return
        status, ctype, payload = self.rest.handle(method, self.path, body)
        self._reply(status, ctype, payload)

    def _reply(self, status: int, ctype: str, payload: bytes):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def do_GET(self):
        self._serve("GET")

    def do_POST(self):
        self._serve("POST")

    def do_PUT(self):
        self._serve("PUT")

    def do_DELETE(self):
        self._serve("DELETE")

    def do_PATCH(self):
        self._serve("PATCH")

    def do_HEAD(self):
        self._serve("HEAD")
