"""A model server that keeps TensorFlow Serving's promises.

``ModelServer`` serves SavedModels laid out the way ``tensorflow_model_server`` expects
(``<base_path>/<version>/saved_model.pb``) through the same services, messages and status
codes, so a client written against TF Serving works unchanged against it:

* gRPC ``tensorflow.serving.PredictionService``: ``Predict`` (with ``output_filter``) and
  ``GetModelMetadata`` (``signature_def``); ``Classify``, ``Regress`` and ``MultiInference``
  answer UNIMPLEMENTED;
* gRPC ``tensorflow.serving.ModelService``: ``GetModelStatus`` and
  ``HandleReloadConfigRequest``;
* the REST API on ``rest_api_port`` (``recsys_tf.serving.rest``): ``/v1/models/NAME[/versions/N
  |/labels/L]`` status and ``/metadata``, ``:predict`` with ``instances`` or ``inputs``, and
  Prometheus metrics on ``/monitoring/prometheus/metrics``.

Status codes follow TF Serving: an unknown model or version is NOT_FOUND ("Servable not found
for request: Latest(name)"); an unknown version label and a bad request (missing, extra or
misnamed input, wrong dtype, bad shape, unparsable tensor, unknown output filter, metadata
without fields) INVALID_ARGUMENT; an unknown signature FAILED_PRECONDITION; a full batching
queue UNAVAILABLE; a message over the size limit RESOURCE_EXHAUSTED. Errors TensorFlow raises
while running a model keep the code TensorFlow gave them. Nothing a client sends turns into
INTERNAL or takes the server down.

Models come from one of three places:

* ``ModelServer(model_name="ranker", model_base_path="saved_models/ranker")`` -- one model,
  like the ``--model_name``/``--model_base_path`` flags;
* ``ModelServer(model_config_file="serving/models.config")`` -- a ``ModelServerConfig`` text
  proto, like ``--model_config_file``: several models, base paths (relative ones are read from
  the config's folder), ``model_version_policy`` (``latest {num_versions}``, ``all``,
  ``specific {versions}``) and ``version_labels``;
* ``ModelServer(model_base_path="saved_models")`` -- every ``<name>/<version>/`` under a root.

Versions are swapped in as TF Serving's availability-preserving policy does: a new version is
loaded and warmed up (``assets.extra/tf_serving_warmup_requests`` replayed; a failing warmup
fails the load), then requests are routed to it, then the old version is let go -- requests in
flight finish on the version they started on, so none fails during a swap. A version that
fails to load is reported in ``GetModelStatus`` (state END with the error) and the served
version stays. ``poll_seconds`` (``--file_system_poll_wait_seconds``) rescans the folders.

Safe defaults: the server binds 127.0.0.1 unless told otherwise; a request over
``max_message_bytes`` (64 MiB) is refused; model names are plain names and every base path
and version folder (symlinks resolved) must lie inside the model root -- by default the
folders holding the models the server was started with -- so a reload request cannot point
the server at arbitrary files. TLS is optional (``ssl_config_file`` as TF Serving reads it, or
a certificate and key).
"""
from __future__ import annotations

import argparse
import itertools
import logging
import os
import re
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import any_pb2, text_format
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    predict_pb2,
    prediction_log_pb2,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from recsys_tf.serving import codec, protos
from recsys_tf.serving.batching import BatchExecutor, BatchingOptions, BatchScheduler
from recsys_tf.serving.errors import CODE_BY_VALUE, ServingError, invalid, not_found
from recsys_tf.serving.flags import (  # noqa: F401  (re-exported)
    DEFAULT_MAX_MESSAGE_BYTES,
    PROMETHEUS_PATH,
    add_server_arguments,
)
from recsys_tf.serving.metrics import Metrics

__all__ = ["ModelServer", "ServingError", "build_parser", "add_server_arguments",
           "server_from_args", "main"]

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
METADATA_SIGNATURE_DEF = "signature_def"
_WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
_MAX_WARMUP_RECORDS = 1000  # TF Serving's limit
_INT32_MAX = 2**31 - 1
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}$")

_STATE = get_model_status_pb2.ModelVersionStatus.State


# --------------------------------------------------------------------------- registry
@dataclass
class _Policy:
    """Which of the versions found on disk to serve."""

    kind: str = "latest"  # "latest" | "all" | "specific"
    num_versions: int = 1
    versions: Tuple[int, ...] = ()

    def select(self, available: Iterable[int]) -> List[int]:
        available = sorted(available)
        if self.kind == "all":
            return available
        if self.kind == "specific":
            return [v for v in available if v in set(self.versions)]
        return available[-max(1, self.num_versions):] if available else []

    @classmethod
    def parse(cls, value) -> "_Policy":
        if value is None or isinstance(value, _Policy):
            return value or cls()
        if isinstance(value, str):
            if value == "all":
                return cls("all")
            if value == "latest":
                return cls()
            raise ValueError(f"unknown version policy {value!r}: use 'latest', 'all', an int "
                             "(latest N) or a list of versions")
        if isinstance(value, (int, np.integer)):
            return cls("latest", num_versions=int(value))
        return cls("specific", versions=tuple(int(v) for v in value))

    @classmethod
    def from_proto(cls, config) -> "_Policy":
        which = config.model_version_policy.WhichOneof("policy_choice")
        if which == "all":
            return cls("all")
        if which == "specific":
            versions = tuple(config.model_version_policy.specific.versions)
            if not versions:
                raise ValueError(f"model {config.name!r}: the specific version policy lists no "
                                 "versions")
            return cls("specific", versions=versions)
        if which == "latest":
            return cls("latest", num_versions=config.model_version_policy.latest.num_versions or 1)
        return cls()


_VERSION_IDS = itertools.count()


@dataclass
class _Version:
    """One loaded version of a model: the SavedModel plus what requests need from it."""

    model: str
    version: int
    path: str
    loaded: object
    signature_defs: dict  # name -> SignatureDef proto, as stored in saved_model.pb
    functions: dict  # name -> concrete function
    metadata_any: any_pb2.Any  # SignatureDefMap packed for GetModelMetadata
    fast: dict = field(default_factory=dict)  # signature -> _FastSignature (None: unusable)
    fast_lock: threading.Lock = field(default_factory=threading.Lock)
    uid: int = field(default_factory=lambda: next(_VERSION_IDS))  # batch queue key


@dataclass
class _Failure:
    stamp: tuple
    attempts: int
    next_try: float


@dataclass
class _Model:
    name: str
    base_path: str
    policy: _Policy = field(default_factory=_Policy)
    labels: Dict[str, int] = field(default_factory=dict)
    # Replaced wholesale (never mutated) so a reader's snapshot stays consistent.
    versions: Dict[int, _Version] = field(default_factory=dict)
    # version -> (state name, status code, message): what GetModelStatus reports; versions
    # that were served and let go stay as END, as TF Serving's state monitor keeps them.
    states: Dict[int, Tuple[str, grpc.StatusCode, str]] = field(default_factory=dict)
    failures: Dict[int, _Failure] = field(default_factory=dict)
    warned_empty: bool = False
    kept_stale: bool = False


def _is_url(path: str) -> bool:
    return "://" in path


def _join(*parts: str) -> str:
    return "/".join([parts[0].rstrip("/")] + [p.strip("/") for p in parts[1:]]) \
        if _is_url(parts[0]) else os.path.join(*parts)


def _listdir(path: str) -> List[str]:
    try:
        return [name.rstrip("/") for name in tf.io.gfile.listdir(path)]
    except Exception:  # missing folder, permissions: nothing to serve from there (yet)
        return []


def _saved_model_file(version_dir: str) -> Optional[str]:
    for name in ("saved_model.pb", "saved_model.pbtxt"):
        candidate = _join(version_dir, name)
        if tf.io.gfile.exists(candidate):
            return candidate
    return None


def _stamp(folder: str) -> tuple:
    """(files, bytes, newest mtime) of a version folder: changes when anything in it does."""
    count = size = newest = 0
    try:
        for parent, _, files in tf.io.gfile.walk(folder):
            for name in files:
                info = tf.io.gfile.stat(_join(parent, name))
                count, size = count + 1, size + info.length
                newest = max(newest, info.mtime_nsec)
    except Exception:  # vanished while scanning: treat as changed next time
        return (-1, -1, time.time())
    return (count, size, newest)


def _read_signature_defs(version_dir: str, tags: Tuple[str, ...]) -> dict:
    """The signature_def map of the MetaGraph tagged ``tags``, read from saved_model.pb."""
    path = _saved_model_file(version_dir)
    if path is None:
        raise FileNotFoundError(f"SavedModel not found in export directory: {version_dir}")
    saved = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    if path.endswith(".pbtxt"):
        text_format.Parse(data.decode("utf-8"), saved)
    else:
        saved.ParseFromString(data)
    if not saved.meta_graphs:
        raise ValueError(f"{path} holds no MetaGraph")
    for graph in saved.meta_graphs:
        if set(tags) == set(graph.meta_info_def.tags):
            return dict(graph.signature_def)
    available = [sorted(g.meta_info_def.tags) for g in saved.meta_graphs]
    raise ValueError(f"no MetaGraph tagged {sorted(tags)} in {path} (it has {available})")


def _load_error(exc: BaseException) -> Tuple[grpc.StatusCode, str]:
    if isinstance(exc, ServingError):
        return exc.code, exc.message
    if isinstance(exc, tf.errors.OpError):
        return CODE_BY_VALUE.get(exc.error_code, grpc.StatusCode.UNKNOWN), exc.message
    if isinstance(exc, DecodeError):
        return grpc.StatusCode.DATA_LOSS, f"cannot parse saved_model.pb: {exc}"
    if isinstance(exc, FileNotFoundError):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    return grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}"


_custom_ops_lock = threading.Lock()
_custom_ops_done = False


def _register_custom_ops() -> None:
    """Make ScaNN's TF ops known before loading: ScaNN SavedModels cannot load without them."""
    global _custom_ops_done
    with _custom_ops_lock:
        if _custom_ops_done:
            return
        _custom_ops_done = True
        try:
            import scann  # noqa: F401  (importing registers the Scann* ops with TensorFlow)
        except Exception as exc:  # optional: only SavedModels using ScaNN need it
            log.debug("ScaNN ops not registered (%s); ScaNN SavedModels will not load", exc)


def _shape_str(dims) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


def _inside(path: str, root: str) -> bool:
    if _is_url(path) or _is_url(root):
        return path.rstrip("/").startswith(root.rstrip("/") + "/") or \
            path.rstrip("/") == root.rstrip("/")
    path, root = os.path.realpath(path), os.path.realpath(root)
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives
        return False


def _parent(path: str) -> str:
    if _is_url(path):
        return path.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(os.path.realpath(path.rstrip(os.sep)) or path)


def check_model_name(name: str) -> None:
    """Model names are plain names: letters, digits, ``_ . -``; no separators, no ``..``."""
    if not _NAME_RE.match(name or "") or ".." in name:
        raise ValueError(f"model name {name!r} is not allowed: use letters, digits, '_', '.' "
                         "and '-' (no path separators, no '..')")


def _ssl_credentials(ssl_config) -> grpc.ServerCredentials:
    ca = ssl_config.custom_ca.encode() if ssl_config.custom_ca else None
    return grpc.ssl_server_credentials(
        [(ssl_config.server_key.encode(), ssl_config.server_cert.encode())],
        root_certificates=ca, require_client_auth=bool(ssl_config.client_verify))


def _parse_channel_arguments(text: str) -> List[Tuple[str, object]]:
    out = []
    for item in filter(None, (s.strip() for s in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--grpc_channel_arguments: expected key=value, got {item!r}")
        try:
            out.append((key, int(value)))
        except ValueError:
            out.append((key, value))
    return out


class _FastSignature:
    """A signature called straight from request protos.

    Unbatched, one TensorFlow function parses the serialized input TensorProtos
    (``ParseTensor``, shapes enforced with ``EnsureShape``), runs the signature and serializes
    the outputs, so no tensor passes through numpy or Python objects. Batched, a second
    function takes the serialized inputs of every request in the batch, parses and
    concatenates them in one graph (a ``while_loop`` over requests into ``TensorArray``s),
    pads to the batch size asked for, and runs the signature once. Both are traced once per
    signature; the numpy path (``ModelServer.execute``) serves REST and signatures these
    cannot trace.
    """

    def __init__(self, fn, sig):
        self.inputs = sorted(sig.inputs)
        self.outputs = sorted(sig.outputs)
        dtypes = [tf.dtypes.as_dtype(sig.inputs[n].dtype) for n in self.inputs]
        shapes = [tf.TensorShape(sig.inputs[n].tensor_shape) for n in self.inputs]
        inputs, outputs, n_in = self.inputs, self.outputs, len(self.inputs)

        @tf.function(input_signature=[tf.TensorSpec([n_in], tf.string)])
        def run(serialized):
            tensors = {name: tf.ensure_shape(tf.io.parse_tensor(serialized[i], dtypes[i]),
                                             shapes[i]) for i, name in enumerate(inputs)}
            result = fn(**tensors)
            return [tf.io.serialize_tensor(result[key]) for key in outputs]

        self.fn = run.get_concrete_function()
        self.batchable = n_in > 0 and all(s.rank is not None and s.rank >= 1 for s in shapes)
        self.batch_fn = None
        if not self.batchable:
            return

        @tf.function(input_signature=[tf.TensorSpec([None, n_in], tf.string),
                                      tf.TensorSpec([], tf.int32)])
        def run_batch(serialized, pad_to):
            count = tf.shape(serialized)[0]
            arrays = tuple(tf.TensorArray(dtypes[i], size=count, infer_shape=False,
                                          element_shape=tf.TensorShape([None]).concatenate(
                                              shapes[i][1:])) for i in range(n_in))

            def body(t, *arrays):
                return (t + 1,) + tuple(arrays[i].write(t, tf.io.parse_tensor(
                    serialized[t, i], dtypes[i])) for i in range(n_in))

            looped = tf.while_loop(lambda t, *_: t < count, body, (tf.constant(0),) + arrays)
            tensors = {}
            for i, name in enumerate(inputs):
                value = tf.ensure_shape(looped[1 + i].concat(), shapes[i])
                missing = tf.maximum(pad_to - tf.shape(value)[0], 0)
                tensors[name] = tf.concat([value, tf.repeat(value[:1], missing, axis=0)], 0)
            result = fn(**tensors)
            return [result[key] for key in outputs]

        self.batch_fn = run_batch.get_concrete_function()

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

    def _run(self, payloads, target):
        try:
            result = self.fast.batch_fn(tf.constant(payloads, dtype=tf.string),
                                        tf.constant(target, tf.int32))
        except tf.errors.OpError as exc:
            raise _op_error(exc) from None
        return {key: value.numpy() for key, value in zip(self.fast.outputs, result)}

    def execute_one(self, payload):
        return self._run([payload], 0)

    def execute(self, payloads, sizes, target):
        outputs = self._run(payloads, target)
        for name, value in outputs.items():
            if value.ndim == 0 or value.shape[0] != max(target, sum(sizes)):
                raise ValueError(f"output {name!r} has no batch dimension; running the "
                                 "requests one by one")
        results, start = [], 0
        for size in sizes:
            results.append({name: value[start:start + size] for name, value in outputs.items()})
            start += size
        return results


def _proto_batch_size(protos) -> Optional[int]:
    """The shared first dimension of the request's tensors, or None (nothing to batch on)."""
    size = None
    for proto in protos.values():
        dims = proto.tensor_shape.dim
        if not dims:
            return None
        if size is None:
            size = dims[0].size
        elif dims[0].size != size:
            return None
    return size


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


# --------------------------------------------------------------------------- the server
class ModelServer:
    """TF Serving-compatible gRPC (and REST) server for SavedModel version folders.

    Args:
      model_base_path: with ``model_name``, the folder holding numeric version folders; without
        it (and without a config file), a root holding ``<name>/<version>/`` for every model
        to serve (a root that itself holds version folders serves one model named after it).
      model_name: the name clients use for the single model.
      model_config_file: a ``ModelServerConfig`` text proto (``models.config``).
      host: bind address for gRPC and REST (default 127.0.0.1: loopback only).
      port: gRPC port; ``0`` picks a free one (``start()`` returns it).
      max_workers: gRPC request threads (TF Serving's ``--grpc_max_threads``; default
        ``max(16, 4 x CPUs)``).
      poll_seconds: when > 0, rescan the version folders this often (hot swap).
      version_policy: for the single-model and root forms: ``"latest"`` (default, one
        version), an int N (latest N), ``"all"``, or a list of versions.
      warmup: replay ``assets.extra/tf_serving_warmup_requests`` after loading a version.
      rest_api_port: REST port (None: no REST API; 0: a free port).
      rest_api_num_threads: REST connections served at once (default ``max(8, 4 x CPUs)``).
      rest_api_timeout_in_ms: idle/read timeout of a REST connection.
      enable_batching, batching_parameters: dynamic batching; ``batching_parameters`` is a
        ``BatchingOptions``, a ``BatchingParameters`` proto or a text-proto file path.
      model_config_file_poll_wait_seconds: when > 0, re-read the config file this often.
      max_message_bytes: largest request accepted (gRPC message or REST body).
      ssl_config_file: TF Serving's ``SSLConfig`` text proto (``server_key``, ``server_cert``,
        ``custom_ca``, ``client_verify``); or ``ssl_cert_file``/``ssl_key_file`` (PEM files)
        with optional ``ssl_ca_file`` (then clients must present a certificate it signed).
      monitoring_config_file: TF Serving's ``MonitoringConfig`` text proto; without it the
        Prometheus metrics are served on ``/monitoring/prometheus/metrics`` of the REST port
        (``enable_metrics=False`` turns them off).
      model_root: folder every base path must lie in (default: the folders holding the
        startup models -- the root itself in root mode).
      num_request_iterations_for_warmup: times each warmup record is replayed.
      max_num_load_retries, load_retry_interval_micros: how often a failed version is retried
        while its folder does not change (a changed folder is retried at the next poll).
      tensorflow_session_parallelism, tensorflow_intra_op_parallelism,
      tensorflow_inter_op_parallelism: TensorFlow thread pools (0: automatic); they can only
        be set before TensorFlow has run anything in this process.
      grpc_channel_arguments: ``"key=value,..."`` passed to the gRPC server.
      saved_model_tags: comma-separated MetaGraph tags to load (default ``serve``).
    """

    def __init__(self, model_base_path: Optional[str] = None, model_name: Optional[str] = None,
                 model_config_file: Optional[str] = None, host: str = "127.0.0.1",
                 port: int = 8500, max_workers: Optional[int] = None, poll_seconds: float = 0,
                 version_policy=None, warmup: bool = True,
                 rest_api_port: Optional[int] = None, rest_api_num_threads: Optional[int] = None,
                 rest_api_timeout_in_ms: int = 30000, enable_batching: bool = False,
                 batching_parameters=None, model_config_file_poll_wait_seconds: float = 0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 ssl_config_file: Optional[str] = None, ssl_cert_file: Optional[str] = None,
                 ssl_key_file: Optional[str] = None, ssl_ca_file: Optional[str] = None,
                 monitoring_config_file: Optional[str] = None, enable_metrics: bool = True,
                 model_root: Optional[str] = None, num_request_iterations_for_warmup: int = 1,
                 max_num_load_retries: int = 5, load_retry_interval_micros: int = 60_000_000,
                 tensorflow_session_parallelism: int = 0,
                 tensorflow_intra_op_parallelism: int = 0,
                 tensorflow_inter_op_parallelism: int = 0,
                 grpc_channel_arguments: str = "", saved_model_tags: str = "serve"):
        cpus = os.cpu_count() or 1
        self.host = host
        self.port = int(port)
        self.max_workers = int(max_workers or max(16, 4 * cpus))
        self.poll_seconds = float(poll_seconds or 0)
        self.config_poll_seconds = float(model_config_file_poll_wait_seconds or 0)
        self.warmup = bool(warmup)
        self.warmup_iterations = max(1, int(num_request_iterations_for_warmup))
        self.max_message_bytes = int(max_message_bytes)
        if not 0 < self.max_message_bytes <= _INT32_MAX:
            raise ValueError("max_message_bytes must be in [1, 2**31 - 1]")
        self.max_load_retries = max(0, int(max_num_load_retries))
        self.load_retry_interval = max(0.0, load_retry_interval_micros / 1e6)
        self.rest_api_port = rest_api_port
        self.rest_api_num_threads = int(rest_api_num_threads or max(8, 4 * cpus))
        self.rest_api_timeout = max(0.001, rest_api_timeout_in_ms / 1000.0)
        self.saved_model_tags = tuple(t.strip() for t in saved_model_tags.split(",") if t.strip())
        self.metrics = Metrics()
        self._channel_arguments = _parse_channel_arguments(grpc_channel_arguments)

        self._ssl_config = self._read_ssl(ssl_config_file, ssl_cert_file, ssl_key_file,
                                          ssl_ca_file)
        self.metrics_path: Optional[str] = PROMETHEUS_PATH if enable_metrics else None
        if monitoring_config_file:
            monitoring = protos.read_text_file(monitoring_config_file, protos.MonitoringConfig)
            prometheus = monitoring.prometheus_config
            self.metrics_path = (prometheus.path or PROMETHEUS_PATH) if prometheus.enable else None

        self.batching: Optional[BatchingOptions] = None
        if batching_parameters is not None and not enable_batching:
            raise ValueError("batching_parameters_file is set without enable_batching")
        if enable_batching:
            self.batching = self._batching_options(batching_parameters)
        self._scheduler: Optional[BatchScheduler] = None

        self._set_parallelism(tensorflow_session_parallelism, tensorflow_intra_op_parallelism,
                              tensorflow_inter_op_parallelism)

        self._lock = threading.RLock()  # guards _models and each model's maps
        self._reload_lock = threading.Lock()  # one rescan at a time
        self._models: Dict[str, _Model] = {}
        self._root: Optional[str] = None
        self._root_policy = _Policy.parse(version_policy)
        self._config_file: Optional[str] = None
        self._config_text: Optional[str] = None
        self._config_dir = os.getcwd()
        self._loaded_once = False
        self._grpc_server = None
        self._rest = None
        self._bound_port: Optional[int] = None
        self._stop_polling = threading.Event()
        self._poller: Optional[threading.Thread] = None

        if model_config_file is not None:
            if model_name is not None or model_base_path is not None:
                raise ValueError("give either model_config_file or model_name/model_base_path")
            self._config_file = os.path.abspath(model_config_file)
            self._config_dir = os.path.dirname(self._config_file)
            self._config_text = self._read_config_text(self._config_file)
            config = self._parse_config(self._config_text, self._config_file)
            self._roots = [model_root] if model_root else sorted(
                {_parent(self._abs(c.base_path)) for c in config.model_config_list.config}) \
                or [self._config_dir]
            self._apply_config(config)
        elif model_base_path is None:
            raise ValueError("give model_base_path (with or without model_name) "
                             "or model_config_file")
        elif model_name is not None:
            check_model_name(model_name)
            base = self._abs(model_base_path)
            self._roots = [model_root or _parent(base)]
            self._check_root(base, model_name)
            self._models[model_name] = _Model(model_name, base, self._root_policy)
        else:
            self._root = self._abs(model_base_path)
            self._roots = [model_root or self._root]
            self._check_root(self._root, "(root)")

    # ----------------------------------------------------------------- configuration
    @staticmethod
    def _read_ssl(config_file, cert_file, key_file, ca_file):
        if config_file:
            if cert_file or key_file:
                raise ValueError("give ssl_config_file or ssl_cert_file/ssl_key_file, not both")
            ssl_config = protos.read_text_file(config_file, protos.SSLConfig)
        elif cert_file or key_file:
            if not (cert_file and key_file):
                raise ValueError("TLS needs both ssl_cert_file and ssl_key_file")
            ssl_config = protos.SSLConfig()
            with open(cert_file, encoding="utf-8") as f:
                ssl_config.server_cert = f.read()
            with open(key_file, encoding="utf-8") as f:
                ssl_config.server_key = f.read()
            if ca_file:
                with open(ca_file, encoding="utf-8") as f:
                    ssl_config.custom_ca = f.read()
                ssl_config.client_verify = True
        else:
            return None
        if not ssl_config.server_key or not ssl_config.server_cert:
            raise ValueError("the SSL config needs server_key and server_cert")
        return ssl_config

    @staticmethod
    def _batching_options(value) -> BatchingOptions:
        if value is None:
            return BatchingOptions()
        if isinstance(value, BatchingOptions):
            value.validate()
            return value
        if isinstance(value, str):
            value = protos.read_text_file(value, protos.BatchingParameters)
        return BatchingOptions.from_proto(value)

    @staticmethod
    def _set_parallelism(session: int, intra: int, inter: int) -> None:
        intra = intra or session
        inter = inter or session
        if not intra and not inter:
            return
        try:
            if intra:
                tf.config.threading.set_intra_op_parallelism_threads(int(intra))
            if inter:
                tf.config.threading.set_inter_op_parallelism_threads(int(inter))
        except RuntimeError as exc:  # TensorFlow already initialised in this process
            log.warning("TensorFlow thread pools not changed (%s); set them before TensorFlow "
                        "runs anything", exc)

    def _abs(self, path: str) -> str:
        if _is_url(path) or os.path.isabs(path):
            return path
        return os.path.normpath(os.path.join(self._config_dir, path))

    def _check_root(self, path: str, name: str) -> None:
        if not any(_inside(path, root) for root in self._roots):
            raise ValueError(f"model {name}: base path {path} is outside the model root "
                             f"({', '.join(self._roots)})")

    @staticmethod
    def _read_config_text(path: str) -> str:
        with open(path, "r", encoding="utf-8") as f:
            return f.read()

    @staticmethod
    def _parse_config(text: str, source: str = "<config>"):
        config = model_server_config_pb2.ModelServerConfig()
        try:
            text_format.Parse(text, config)
        except text_format.ParseError as exc:
            raise ValueError(f"cannot parse model config {source}: {exc}") from exc
        return config

    def _apply_config(self, config) -> None:
        """Replace the served model list with a ModelServerConfig's (kept versions stay loaded)."""
        if config.WhichOneof("config") != "model_config_list":
            raise ValueError("only model_config_list configs are supported")
        wanted: Dict[str, _Model] = {}
        for entry in config.model_config_list.config:
            if not entry.name:
                raise ValueError("a model config entry has no name")
            check_model_name(entry.name)
            if entry.name in wanted:
                raise ValueError(f"model {entry.name!r} is configured twice")
            if not entry.base_path:
                raise ValueError(f"model {entry.name!r} has no base_path")
            if entry.model_platform not in ("", "tensorflow"):
                raise ValueError(f"model {entry.name!r}: platform {entry.model_platform!r} "
                                 "is not supported (only 'tensorflow')")
            base = self._abs(entry.base_path)
            self._check_root(base, entry.name)
            for label in entry.version_labels:
                if not label or not _NAME_RE.match(label):
                    raise ValueError(f"model {entry.name!r}: bad version label {label!r}")
            wanted[entry.name] = _Model(entry.name, base, _Policy.from_proto(entry),
                                        dict(entry.version_labels))
        with self._lock:
            for name, model in wanted.items():
                old = self._models.get(name)
                if old is not None and old.base_path == model.base_path:
                    model.versions, model.states = old.versions, old.states
                    model.failures = old.failures
            removed = {n: m for n, m in self._models.items() if n not in wanted}
            self._models = wanted
            self._root = None
        for name, model in removed.items():
            for version in sorted(model.versions):
                log.info("unloaded model %s version %d (model removed from the config)",
                         name, version)

    def reload_config(self, config) -> Dict[str, List[int]]:
        """Serve the models of a new ``ModelServerConfig`` (proto, text, or file path)."""
        if isinstance(config, str):
            if os.path.exists(config):
                config = self._parse_config(self._read_config_text(config), config)
            else:
                config = self._parse_config(config)
        with self._reload_lock:
            self._apply_config(config)
        return self.reload()

    # ----------------------------------------------------------------- loading
    def reload(self) -> Dict[str, List[int]]:
        """Rescan the version folders; load new versions, then drop those no longer wanted.

        Returns ``{model: [served versions]}``.
        """
        with self._reload_lock:
            if self._root is not None:
                self._sync_root()
                if not self._models:
                    log.warning("no models (<name>/<version>/saved_model.pb) found under %s",
                                self._root)
            with self._lock:
                models = list(self._models.values())
            for model in models:
                try:
                    self._reload_model(model)
                except Exception:  # one model's trouble must not stop the others
                    log.exception("rescan of model %s failed", model.name)
            self._loaded_once = True
        return self.models()

    def _sync_root(self) -> None:
        root = self._root
        if self._list_versions(root, "(root)"):  # the root is itself one model's folder
            names = {os.path.basename(root.rstrip("/")): root}
        else:
            names = {}
            for name in _listdir(root):
                if name.startswith(".") or not _NAME_RE.match(name) or ".." in name:
                    continue
                folder = _join(root, name)
                if any(sub.isdigit() for sub in _listdir(folder)):
                    names[name] = folder
        with self._lock:
            for name in sorted(set(self._models) - set(names)):
                model = self._models.pop(name)
                for version in sorted(model.versions):
                    log.info("unloaded model %s version %d (its folder is gone)", name, version)
            for name, folder in names.items():
                if name not in self._models:
                    self._models[name] = _Model(name, folder, self._root_policy)

    def _list_versions(self, base_path: str, name: str) -> Dict[int, str]:
        """{version: folder} for every numeric sub-folder that holds a saved_model.pb and lies
        inside the model root (symlinks resolved)."""
        found = {}
        for entry in _listdir(base_path):
            if not entry.isdigit():
                continue
            folder = _join(base_path, entry)
            if _saved_model_file(folder) is None:
                continue
            if not any(_inside(folder, root) for root in self._roots):
                log.error("model %s: version folder %s resolves outside the model root; "
                          "ignored", name, folder)
                continue
            found[int(entry)] = folder
        return found

    def _reload_model(self, model: _Model) -> None:
        on_disk = self._list_versions(model.base_path, model.name)
        wanted = model.policy.select(on_disk)
        if not on_disk and not model.warned_empty:
            log.warning("No versions of servable %s found under base path %s",
                        model.name, model.base_path)
            model.warned_empty = True
        elif on_disk:
            model.warned_empty = False
        with self._lock:
            current = model.versions
        new = {v: current[v] for v in wanted if v in current}
        now = time.monotonic()
        for version in wanted:
            if version in current:
                continue
            path = on_disk[version]
            stamp = _stamp(path)
            failure = model.failures.get(version)
            if failure is not None and failure.stamp == stamp and (
                    failure.attempts > self.max_load_retries or now < failure.next_try):
                continue  # failed before, unchanged since: retry only as configured
            attempts = 1 if failure is None or failure.stamp != stamp else failure.attempts + 1
            with self._lock:
                model.states[version] = ("LOADING", grpc.StatusCode.OK, "")
            try:
                new[version] = self._load_version(model.name, version, path)
            except Exception as exc:
                code, message = _load_error(exc)
                log.error("failed to load model %s version %d from %s: %s: %s", model.name,
                          version, path, code.name, message.splitlines()[0] if message else "")
                log.debug("load failure detail", exc_info=True)
                self.metrics.record_load(path, code.name)
                with self._lock:
                    model.states[version] = ("END", code, message)
                    model.failures[version] = _Failure(stamp, attempts,
                                                       now + self.load_retry_interval)
                continue
            self.metrics.record_load(path, "OK")
            with self._lock:
                model.failures.pop(version, None)
        for version in list(model.failures):
            if version not in on_disk:
                model.failures.pop(version, None)
        if current and wanted and not new:
            # Availability first (TF Serving's availability-preserving policy): nothing the
            # policy wants could be loaded, so the versions served now stay.
            if not model.kept_stale:
                log.warning("model %s: no wanted version %s could be loaded; still serving %s",
                            model.name, wanted, sorted(current))
                model.kept_stale = True
            return
        model.kept_stale = False
        dropped = sorted(set(current) - set(new))
        with self._lock:
            model.versions = dict(sorted(new.items()))  # route to the new set ...
            for version in new:
                model.states[version] = ("AVAILABLE", grpc.StatusCode.OK, "")
            for version in dropped:
                model.states[version] = ("UNLOADING", grpc.StatusCode.OK, "")
        for version in dropped:  # ... then let the old ones go (requests in flight keep them)
            with self._lock:
                model.states[version] = ("END", grpc.StatusCode.OK, "")
            log.info("unloaded model %s version %d", model.name, version)

    def _load_version(self, name: str, version: int, path: str) -> _Version:
        _register_custom_ops()
        start = time.perf_counter()
        signature_defs = _read_signature_defs(path, self.saved_model_tags)
        loaded = tf.saved_model.load(path, tags=list(self.saved_model_tags))
        functions = {key: loaded.signatures[key] for key in list(loaded.signatures.keys())}
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in signature_defs.items():
            sig_map.signature_def[key].CopyFrom(sig)
        packed = any_pb2.Any()
        packed.Pack(sig_map)
        ver = _Version(name, version, path, loaded, signature_defs, functions, packed)
        if DEFAULT_SIGNATURE in functions and DEFAULT_SIGNATURE in signature_defs:
            self._fast(ver, DEFAULT_SIGNATURE)  # traced now, not on the first request
        warm = self._run_warmup(ver) if self.warmup else 0
        log.info("loaded model %s version %d from %s in %.2fs%s", name, version, path,
                 time.perf_counter() - start, f" ({warm} warmup requests)" if warm else "")
        return ver

    def _run_warmup(self, ver: _Version) -> int:
        """Replay the version's warmup records; any failure fails the load, as in TF Serving."""
        path = _join(ver.path, _WARMUP_FILE)
        if not tf.io.gfile.exists(path):
            return 0
        done = 0
        for i, record in enumerate(tf.data.TFRecordDataset(path)):
            if i >= _MAX_WARMUP_RECORDS:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Number of warmup records exceeds the maximum "
                                   f"({_MAX_WARMUP_RECORDS}) at {path}")
            entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            kind = entry.WhichOneof("log_type")
            if kind != "predict_log":
                log.warning("model %s version %d: %s warmup records are not replayed",
                            ver.model, ver.version, kind)
                continue
            for _ in range(self.warmup_iterations):
                try:
                    self._run_predict(ver, entry.predict_log.request, batch=False)
                except ServingError as exc:
                    raise ServingError(exc.code, f"warmup request {i} failed: {exc.message}") \
                        from None
                done += 1
        return done

    def models(self) -> Dict[str, List[int]]:
        """``{model: [served versions]}``."""
        with self._lock:
            return {name: sorted(m.versions) for name, m in self._models.items()}

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> int:
        """Load the models (unless already loaded), listen, and return the bound gRPC port."""
        if self._grpc_server is not None:
            return self._bound_port
        if not self._loaded_once:
            self.reload()
        if self.batching is not None and self._scheduler is None:
            self._scheduler = BatchScheduler(self.batching, on_batch=self.metrics.record_batch)
        overridden = {key for key, _ in self._channel_arguments}
        options = [(k, v) for k, v in [
            ("grpc.max_send_message_length", _INT32_MAX),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_ping_strikes", 0),
            ("grpc.so_reuseport", 0),  # a busy port is an error, not a silent share
        ] if k not in overridden] + self._channel_arguments
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.max_workers,
                                       thread_name_prefix="model-server"),
            handlers=[_handlers(self)], options=options,
            maximum_concurrent_rpcs=64 * self.max_workers)
        address = f"{self._bracket(self.host)}:{self.port}"
        try:
            if self._ssl_config is not None:
                bound = server.add_secure_port(address, _ssl_credentials(self._ssl_config))
            else:
                bound = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {address}: {exc}") from exc
        if not bound:
            raise OSError(f"cannot listen on {address}")
        if self.rest_api_port is not None:
            from recsys_tf.serving.rest import RestServer

            try:
                self._rest = RestServer(self, self.host, int(self.rest_api_port))
            except OSError:
                server.stop(None)
                raise
        server.start()
        self._grpc_server, self._bound_port = server, bound
        log.info("model server listening on %s:%d%s, serving %s", self.host, bound,
                 " (TLS)" if self._ssl_config is not None else "", self.models())
        if self._rest is not None:
            self._rest.start()
            log.info("REST API listening on %s:%d%s", self.host, self._rest.port,
                     f"; metrics on {self.metrics_path}" if self.metrics_path else "")
        if self.poll_seconds > 0 or (self.config_poll_seconds > 0 and self._config_file):
            self._stop_polling.clear()
            self._poller = threading.Thread(target=self._poll, name="model-server-poll",
                                            daemon=True)
            self._poller.start()
        return bound

    @staticmethod
    def _bracket(host: str) -> str:
        return f"[{host}]" if ":" in host and not host.startswith("[") else host

    def _poll(self) -> None:
        next_fs = time.monotonic() + self.poll_seconds if self.poll_seconds > 0 else None
        next_cfg = time.monotonic() + self.config_poll_seconds \
            if self.config_poll_seconds > 0 and self._config_file else None
        while True:
            due = min(t for t in (next_fs, next_cfg) if t is not None)
            if self._stop_polling.wait(max(0.0, due - time.monotonic())):
                return
            now = time.monotonic()
            if next_cfg is not None and now >= next_cfg:
                next_cfg = now + self.config_poll_seconds
                self._poll_config_file()
            if next_fs is not None and now >= next_fs:
                try:
                    self.reload()
                except Exception:
                    log.exception("model rescan failed")
                next_fs = time.monotonic() + self.poll_seconds

    def _poll_config_file(self) -> None:
        try:
            text = self._read_config_text(self._config_file)
        except OSError as exc:
            log.error("cannot read model config %s: %s", self._config_file, exc)
            return
        if text == self._config_text:
            return
        try:
            self.reload_config(self._parse_config(text, self._config_file))
            self._config_text = text
            log.info("applied the changed model config %s", self._config_file)
        except Exception as exc:
            self._config_text = text  # do not retry a broken file until it changes again
            log.error("ignoring the changed model config %s: %s", self._config_file, exc)

    def stop(self, grace: Optional[float] = None) -> None:
        """Stop listening; in-flight requests get ``grace`` seconds to finish."""
        self._stop_polling.set()
        if self._poller is not None:
            self._poller.join(timeout=10)
            self._poller = None
        rest, self._rest = self._rest, None
        if rest is not None:
            rest.stop()
        server, self._grpc_server = self._grpc_server, None
        if server is not None:
            server.stop(grace).wait()
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.stop()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the server stops (or ``timeout`` passes); True when it stopped."""
        server = self._grpc_server
        if server is None:
            return True
        return server.wait_for_termination(timeout)

    @property
    def bound_port(self) -> Optional[int]:
        return self._bound_port

    @property
    def rest_port(self) -> Optional[int]:
        """The bound REST port (after ``start()``), or None without a REST API."""
        return None if self._rest is None else self._rest.port

    def _client_host(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::", "[::]") else self.host
        return f"[{host}]" if ":" in host and not host.startswith("[") else host

    @property
    def target(self) -> str:
        """``host:port`` of the gRPC API for a client (after ``start()``)."""
        if self._bound_port is None:
            raise RuntimeError("the server is not started")
        return f"{self._client_host()}:{self._bound_port}"

    @property
    def rest_target(self) -> str:
        """``host:port`` of the REST API (after ``start()`` with a REST port)."""
        if self.rest_port is None:
            raise RuntimeError("the REST API is not running")
        return f"{self._client_host()}:{self.rest_port}"

    def __enter__(self) -> "ModelServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------------- resolving
    def served_name(self, name: str) -> str:
        """``name`` when it is a configured model, else "" (the metrics' label for unknowns)."""
        with self._lock:
            return name if name in self._models else ""

    def resolve(self, spec) -> _Version:
        """The loaded version a ``ModelSpec`` asks for; raises NOT_FOUND / INVALID_ARGUMENT."""
        with self._lock:
            model = self._models.get(spec.name)
            versions = model.versions if model is not None else {}
            labels = model.labels if model is not None else {}
        choice = spec.WhichOneof("version_choice")
        if choice == "version_label":
            if spec.version_label not in labels:
                raise invalid(f"Unrecognized servable version label: {spec.version_label}")
            number = labels[spec.version_label]
            request = f"Specific({spec.name}, {number})"
        elif choice == "version":
            number = spec.version.value
            request = f"Specific({spec.name}, {number})"
        else:
            number = max(versions) if versions else None
            request = f"Latest({spec.name})"
        if number is None or number not in versions:
            raise not_found(f"Servable not found for request: {request}")
        return versions[number]

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
    def predict(self, request):
        """Answer a ``PredictRequest`` in-process; raises ``ServingError``."""
        if not request.HasField("model_spec"):
            raise invalid("Missing ModelSpec")
        return self._run_predict(self.resolve(request.model_spec), request)

    def _run_predict(self, ver: _Version, request, batch: bool = True):
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        sig, fn = self.signature_of(ver, name)
        self._check_inputs(sig, request.inputs)
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
        size = _proto_batch_size(request.inputs) if fast is not None else None
        if size is not None and not self.batching.pad_variable_length_inputs and (
                size <= self.batching.execution_size):
            # batching: the batch thread parses, concatenates and runs; rows come back here
            inner = tuple(tuple(d.size for d in request.inputs[k].tensor_shape.dim[1:])
                          for k in fast.inputs)
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

    def _check_inputs(self, sig, inputs) -> None:
        """TF Serving's input checks, made on the protos without decoding any values."""
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
        for key in expected:
            self._check_tensor(key, inputs[key], sig.inputs[key])

    def _check_tensor(self, key: str, proto, info) -> None:
        if proto.dtype != info.dtype:
            raise invalid(f"input '{key}': expects {codec.dtype_name(info.dtype)} but "
                          f"{codec.dtype_name(proto.dtype)} is provided")
        shape = proto.tensor_shape
        if shape.unknown_rank:
            raise invalid(f"tensor parsing error: {key}: the tensor has unknown rank")
        dims = [d.size for d in shape.dim]
        if any(d < 0 for d in dims):
            raise invalid(f"tensor parsing error: {key}: negative dimension in shape "
                          f"{_shape_str(dims)}")
        n = 1
        for d in dims:
            n *= d
        if n > self.max_message_bytes:
            raise invalid(f"tensor parsing error: {key}: shape {_shape_str(dims)} holds {n} "
                          f"elements, more than this server accepts ({self.max_message_bytes})")
        is_string = proto.dtype == codec.dtype_enum("string")
        try:
            if proto.tensor_content:
                if is_string:
                    raise invalid(f"tensor parsing error: {key}: string tensors are sent in "
                                  "string_val, not tensor_content")
                need = n * codec.numpy_dtype(proto.dtype).itemsize
                if len(proto.tensor_content) != need:
                    raise invalid(
                        f"tensor parsing error: {key}: tensor_content holds "
                        f"{len(proto.tensor_content)} bytes, but a "
                        f"{codec.dtype_name(proto.dtype)} tensor of shape {_shape_str(dims)} "
                        f"needs {need}")
            else:
                field_name, per = codec.value_field(proto.dtype)
                count = len(getattr(proto, field_name))
                if count > n * per:
                    raise invalid(f"tensor parsing error: {key}: the TensorProto has "
                                  f"{count // per} {codec.dtype_name(proto.dtype)} values for "
                                  f"a tensor of {n} elements")
        except TypeError as exc:  # a dtype the codec has no layout for
            raise invalid(f"tensor parsing error: {key}: {exc}") from None
        want = None if info.tensor_shape.unknown_rank else [d.size for d in
                                                             info.tensor_shape.dim]
        if want is not None and (len(want) != len(dims) or any(
                w >= 0 and w != g for w, g in zip(want, dims))):
            raise invalid(f"input '{key}': shape {_shape_str(dims)} is incompatible with the "
                          f"signature's shape {_shape_str(want)}")

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

    # ----------------------------------------------------------------- metadata / status
    def get_model_metadata(self, request):
        """Answer a ``GetModelMetadataRequest`` in-process; raises ``ServingError``."""
        if not request.HasField("model_spec"):
            raise invalid("Missing ModelSpec")
        if not request.metadata_field:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for name in request.metadata_field:
            if name != METADATA_SIGNATURE_DEF:
                raise invalid(f"Metadata field {name} is not supported")
        ver = self.resolve(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = ver.model
        response.model_spec.version.value = ver.version
        response.metadata[METADATA_SIGNATURE_DEF].CopyFrom(ver.metadata_any)
        return response

    def get_model_status(self, request):
        """Answer a ``GetModelStatusRequest`` in-process; raises ``ServingError``.

        As in TF Serving, a version label in the request is not resolved: all versions are
        reported (a version number narrows the answer to that version).
        """
        if not request.HasField("model_spec"):
            raise invalid("Missing ModelSpec")
        spec = request.model_spec
        with self._lock:
            model = self._models.get(spec.name)
            states = dict(model.states) if model is not None else {}
        if spec.WhichOneof("version_choice") == "version":
            only = spec.version.value
            if only not in states:
                raise not_found(f"Could not find version {only} of model {spec.name}")
            states = {only: states[only]}
        if not states:
            raise not_found(f"Could not find any versions of model {spec.name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in sorted(states, reverse=True):
            state, code, message = states[version]
            entry = response.model_version_status.add()
            entry.version = version
            entry.state = _STATE.Value(state)
            entry.status.SetInParent()
            entry.status.error_code = code.value[0]
            entry.status.error_message = message
        return response

    def handle_reload_config(self, request):
        """Answer a ``ReloadConfigRequest``: INVALID_ARGUMENT for a bad or unsafe config."""
        try:
            self.reload_config(request.config)
        except ValueError as exc:
            raise invalid(str(exc)) from None
        response = model_management_pb2.ReloadConfigResponse()
        response.status.SetInParent()
        return response


# --------------------------------------------------------------------------- gRPC glue
_UNIMPLEMENTED = ("{name} is not supported by this server: its models export Predict "
                  "signatures; call Predict with the signature that returns the scores")


def _handlers(server: ModelServer) -> grpc.GenericRpcHandler:
    """Raw-bytes handlers: the request is parsed here, so an unparsable message is an
    INVALID_ARGUMENT answer instead of gRPC's own INTERNAL."""

    def method(api, request_cls, fn):
        def handle(raw, context):
            start = time.perf_counter()
            model, code = "", grpc.StatusCode.OK
            try:
                try:
                    request = request_cls.FromString(raw)
                except (DecodeError, RuntimeError) as exc:
                    raise invalid(f"cannot parse the request as a "
                                  f"{request_cls.DESCRIPTOR.full_name}: {exc}") from None
                spec = getattr(request, "model_spec", None)
                model = server.served_name(spec.name) if spec is not None else ""
                return fn(request)
            except ServingError as exc:
                code, message = exc.code, exc.message
            except Exception as exc:  # never let a request take the server down
                log.exception("unexpected error while serving %s", api)
                code, message = grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}"
            finally:
                server.metrics.record_request(model, api, "GRPC", code.name,
                                              (time.perf_counter() - start) * 1e6)
            log.warning("%s %s: %s: %s", api, model or "-", code.name, message[:300])
            context.abort(code, message)

        return grpc.unary_unary_rpc_method_handler(
            handle, request_deserializer=None,
            response_serializer=lambda response: response.SerializeToString())

    def unimplemented(name):
        def fn(_request):
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED, _UNIMPLEMENTED.format(name=name))
        return fn

    prediction = {
        "Predict": method("predict", predict_pb2.PredictRequest, server.predict),
        "GetModelMetadata": method("GetModelMetadata",
                                   get_model_metadata_pb2.GetModelMetadataRequest,
                                   server.get_model_metadata),
        "Classify": method("classify", classification_pb2.ClassificationRequest,
                           unimplemented("Classify")),
        "Regress": method("regress", regression_pb2.RegressionRequest,
                          unimplemented("Regress")),
        "MultiInference": method("MultiInference", inference_pb2.MultiInferenceRequest,
                                 unimplemented("MultiInference")),
    }
    model_service = {
        "GetModelStatus": method("GetModelStatus", get_model_status_pb2.GetModelStatusRequest,
                                 server.get_model_status),
        "HandleReloadConfigRequest": method(
            "HandleReloadConfigRequest", model_management_pb2.ReloadConfigRequest,
            server.handle_reload_config),
    }

    class _Both(grpc.GenericRpcHandler):
        def __init__(self):
            self._handlers = [
                grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService",
                                                     prediction),
                grpc.method_handlers_generic_handler("tensorflow.serving.ModelService",
                                                     model_service),
            ]

        def service(self, handler_call_details):
            for handler in self._handlers:
                found = handler.service(handler_call_details)
                if found is not None:
                    return found
            return None

    return _Both()


# --------------------------------------------------------------------------- command line
def server_from_args(args, default_model_base_path: Optional[str] = None) -> ModelServer:
    base = args.model_base_path
    if args.model_config_file is None and base is None:
        base = default_model_base_path
    return ModelServer(
        model_base_path=None if args.model_config_file else base,
        model_name=None if args.model_config_file else args.model_name,
        model_config_file=args.model_config_file, host=args.host, port=args.port,
        max_workers=args.grpc_max_threads or None,
        poll_seconds=args.file_system_poll_wait_seconds, warmup=args.enable_model_warmup,
        rest_api_port=args.rest_api_port or None,
        rest_api_num_threads=args.rest_api_num_threads or None,
        rest_api_timeout_in_ms=args.rest_api_timeout_in_ms,
        enable_batching=args.enable_batching,
        batching_parameters=args.batching_parameters_file,
        model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
        max_message_bytes=args.max_message_bytes, ssl_config_file=args.ssl_config_file,
        ssl_cert_file=args.ssl_cert_file, ssl_key_file=args.ssl_key_file,
        ssl_ca_file=args.ssl_ca_file, monitoring_config_file=args.monitoring_config_file,
        model_root=args.model_root,
        num_request_iterations_for_warmup=args.num_request_iterations_for_warmup,
        max_num_load_retries=args.max_num_load_retries,
        load_retry_interval_micros=args.load_retry_interval_micros,
        tensorflow_session_parallelism=args.tensorflow_session_parallelism,
        tensorflow_intra_op_parallelism=args.tensorflow_intra_op_parallelism,
        tensorflow_inter_op_parallelism=args.tensorflow_inter_op_parallelism,
        grpc_channel_arguments=args.grpc_channel_arguments,
        saved_model_tags=args.saved_model_tags)


def run_server(args, default_model_base_path: Optional[str] = None, say=None) -> int:
    """Build, start and serve until interrupted; the body of ``recsys-tf serve``."""
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        server = server_from_args(args, default_model_base_path)
        port = server.start()
    except (ValueError, OSError) as exc:
        log.error("cannot start the model server: %s", exc)
        return 2
    if say is not None:
        rest = f", REST on {args.host}:{server.rest_port}" if server.rest_port else ""
        say(f"serving gRPC on {args.host}:{port}{rest}")
    def _terminate(signum, frame):  # docker stop / kill: the same graceful stop as Ctrl-C
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        server.wait()
    except KeyboardInterrupt:
        log.info("stopping: in-flight requests get 2 s to finish")
        server.stop(grace=2)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recsys_tf.serving.server",
        description="TF Serving-compatible model server (gRPC PredictionService/ModelService, "
        "REST API, Prometheus metrics).")
    add_server_arguments(parser)
    return parser


def main(argv=None) -> int:
    """``python -m recsys_tf.serving.server --model_base_path saved_models --port 8500``."""
    args = build_parser().parse_args(argv)
    return run_server(args)


if __name__ == "__main__":
    raise SystemExit(main())
