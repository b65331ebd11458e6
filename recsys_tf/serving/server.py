"""A model server that speaks TensorFlow Serving's gRPC protocol.

``ModelServer`` serves SavedModels laid out the way ``tensorflow_model_server`` expects
(``<base_path>/<version>/saved_model.pb``) through the same services and messages:

* ``tensorflow.serving.PredictionService``: ``Predict`` and ``GetModelMetadata``
  (``Classify``, ``Regress`` and ``MultiInference`` answer UNIMPLEMENTED);
* ``tensorflow.serving.ModelService``: ``GetModelStatus`` and ``HandleReloadConfigRequest``.

Status codes follow TF Serving: an unknown model or version is NOT_FOUND ("Servable not
found for request: Latest(name)"), an unknown signature FAILED_PRECONDITION, a bad request
(unknown, missing or mistyped input, incompatible shape, unknown output filter, unknown
version label) INVALID_ARGUMENT, and errors raised while running the model keep the code
TensorFlow gave them. So a client written against TF Serving works unchanged against it.

Models come from one of three places:

* ``ModelServer(model_name="ranker", model_base_path="saved_models/ranker")`` -- one model,
  like the ``--model_name``/``--model_base_path`` flags;
* ``ModelServer(model_config_file="serving/models.config")`` -- a ``ModelServerConfig`` text
  proto, like ``--model_config_file`` (relative base paths are read from the config's folder;
  ``model_version_policy`` and ``version_labels`` are honoured);
* ``ModelServer(model_base_path="saved_models")`` -- every ``<name>/<version>/`` under a root.

Each model serves its latest version by default (TF Serving's default policy). ``reload()``
rescans the version folders and swaps versions in without dropping requests (a new version
is loaded before the old one is let go); ``poll_seconds > 0`` does that periodically.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import any_pb2, text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from recsys_tf.serving import codec

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
METADATA_SIGNATURE_DEF = "signature_def"
_WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
_MAX_WARMUP_RECORDS = 1000
_GRPC_MAX_MESSAGE = 2**31 - 1  # TF Serving accepts messages up to INT_MAX bytes

_CODE_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
    """A request failure with the gRPC status code TF Serving would answer with."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


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
            return cls("specific", versions=tuple(config.model_version_policy.specific.versions))
        if which == "latest":
            return cls("latest", num_versions=config.model_version_policy.latest.num_versions or 1)
        return cls()


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


@dataclass
class _Model:
    name: str
    base_path: str
    policy: _Policy = field(default_factory=_Policy)
    labels: Dict[str, int] = field(default_factory=dict)
    # Replaced wholesale (never mutated) so a reader's snapshot stays consistent.
    versions: Dict[int, _Version] = field(default_factory=dict)
    loading: set = field(default_factory=set)
    # version -> (folder stamp, error) of versions that failed to load
    failed: Dict[int, Tuple[tuple, str]] = field(default_factory=dict)
    warned_empty: bool = False


def _is_url(path: str) -> bool:
    return "://" in path


def _join(*parts: str) -> str:
    return "/".join([parts[0].rstrip("/")] + [p.strip("/") for p in parts[1:]]) \
        if _is_url(parts[0]) else os.path.join(*parts)


def _listdir(path: str) -> List[str]:
    gfile = tf.io.gfile
    try:
        return [name.rstrip("/") for name in gfile.listdir(path)]
    except Exception:  # missing folder, permissions: nothing to serve from there (yet)
        return []


def _saved_model_file(version_dir: str) -> Optional[str]:
    gfile = tf.io.gfile
    for name in ("saved_model.pb", "saved_model.pbtxt"):
        candidate = _join(version_dir, name)
        if gfile.exists(candidate):
            return candidate
    return None


def _list_versions(base_path: str) -> Dict[int, str]:
    """{version: folder} for every numeric sub-folder that holds a saved_model.pb."""
    found = {}
    for name in _listdir(base_path):
        if name.isdigit():
            folder = _join(base_path, name)
            if _saved_model_file(folder) is not None:
                found[int(name)] = folder
    return found


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


def _read_signature_defs(version_dir: str) -> dict:
    """The signature_def map of the "serve" MetaGraph, read straight from saved_model.pb."""
    path = _saved_model_file(version_dir)
    saved = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    if path.endswith(".pbtxt"):
        text_format.Parse(data.decode("utf-8"), saved)
    else:
        saved.ParseFromString(data)
    if not saved.meta_graphs:
        raise ValueError(f"{path} holds no MetaGraph")
    graph = next((g for g in saved.meta_graphs if "serve" in g.meta_info_def.tags),
                 saved.meta_graphs[0])
    return dict(graph.signature_def)


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


# --------------------------------------------------------------------------- the server
class ModelServer:
    """TF Serving-compatible gRPC server for SavedModel version folders.

    Args:
      model_base_path: with ``model_name``, the folder holding numeric version folders; without
        it (and without a config file), a root holding ``<name>/<version>/`` for every model
        to serve (a root that itself holds version folders serves one model named after it).
      model_name: the name clients use for the single model.
      model_config_file: a ``ModelServerConfig`` text proto (``models.config``).
      host, port: where to listen; ``port=0`` picks a free port (``start()`` returns it).
      max_workers: request threads.
      poll_seconds: when > 0, rescan the version folders this often (hot swap).
      version_policy: for the single-model and root forms: ``"latest"`` (default, one
        version), an int N (latest N), ``"all"``, or a list of versions.
      warmup: replay ``assets.extra/tf_serving_warmup_requests`` after loading a version.
    """

    def __init__(self, model_base_path: Optional[str] = None, model_name: Optional[str] = None,
                 model_config_file: Optional[str] = None, host: str = "127.0.0.1",
                 port: int = 8500, max_workers: int = 8, poll_seconds: float = 0,
                 version_policy=None, warmup: bool = True):
        self.host = host
        self.port = int(port)
        self.max_workers = int(max_workers)
        self.poll_seconds = float(poll_seconds or 0)
        self.warmup = bool(warmup)
        self._lock = threading.RLock()  # guards _models and each model's version map
        self._reload_lock = threading.Lock()  # one rescan at a time
        self._models: Dict[str, _Model] = {}
        self._root: Optional[str] = None
        self._root_policy = _Policy.parse(version_policy)
        self._config_dir = os.getcwd()
        self._loaded_once = False
        self._grpc_server = None
        self._bound_port: Optional[int] = None
        self._stop_polling = threading.Event()
        self._poller: Optional[threading.Thread] = None

        if model_config_file is not None:
            if model_name is not None or model_base_path is not None:
                raise ValueError("give either model_config_file or model_name/model_base_path")
            self._config_dir = os.path.dirname(os.path.abspath(model_config_file))
            self._apply_config(self._parse_config_file(model_config_file))
        elif model_base_path is None:
            raise ValueError("give model_base_path (with or without model_name) "
                             "or model_config_file")
        elif model_name is not None:
            self._models[model_name] = _Model(model_name, self._abs(model_base_path),
                                              self._root_policy)
        else:
            self._root = self._abs(model_base_path)

    # ----------------------------------------------------------------- configuration
    def _abs(self, path: str) -> str:
        if _is_url(path) or os.path.isabs(path):
            return path
        return os.path.normpath(os.path.join(self._config_dir, path))

    @staticmethod
    def _parse_config_file(path: str):
        config = model_server_config_pb2.ModelServerConfig()
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
        try:
            text_format.Parse(text, config)
        except text_format.ParseError as exc:
            raise ValueError(f"cannot parse model config {path}: {exc}") from exc
        return config

    def _apply_config(self, config) -> None:
        """Replace the served model list with a ModelServerConfig's (kept versions stay loaded)."""
        if config.WhichOneof("config") != "model_config_list":
            raise ValueError("only model_config_list configs are supported")
        wanted: Dict[str, _Model] = {}
        for entry in config.model_config_list.config:
            if not entry.name:
                raise ValueError("a model config entry has no name")
            if entry.name in wanted:
                raise ValueError(f"model {entry.name!r} is configured twice")
            if not entry.base_path:
                raise ValueError(f"model {entry.name!r} has no base_path")
            if entry.model_platform not in ("", "tensorflow"):
                raise ValueError(f"model {entry.name!r}: platform {entry.model_platform!r} "
                                 "is not supported (only 'tensorflow')")
            wanted[entry.name] = _Model(entry.name, self._abs(entry.base_path),
                                        _Policy.from_proto(entry), dict(entry.version_labels))
        with self._lock:
            for name, model in wanted.items():
                old = self._models.get(name)
                if old is not None and old.base_path == model.base_path:
                    model.versions = old.versions
            removed = sorted(set(self._models) - set(wanted))
            self._models = wanted
            self._root = None
        for name in removed:
            log.info("unloaded model %s (removed from config)", name)

    def reload_config(self, config) -> Dict[str, List[int]]:
        """Serve the models of a new ``ModelServerConfig`` (proto, text, or file path)."""
        if isinstance(config, str):
            if os.path.exists(config):
                config = self._parse_config_file(config)
            else:
                config = text_format.Parse(config, model_server_config_pb2.ModelServerConfig())
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
                self._reload_model(model)
            self._loaded_once = True
        return self.models()

    def _sync_root(self) -> None:
        root = self._root
        if _list_versions(root):  # the root is itself one model's folder
            names = {os.path.basename(root.rstrip("/")): root}
        else:
            names = {}
            for name in _listdir(root):
                folder = _join(root, name)
                if any(sub.isdigit() for sub in _listdir(folder)):
                    names[name] = folder
        with self._lock:
            for name in sorted(set(self._models) - set(names)):
                log.info("unloaded model %s (its folder is gone)", name)
                del self._models[name]
            for name, folder in names.items():
                if name not in self._models:
                    self._models[name] = _Model(name, folder, self._root_policy)

    def _reload_model(self, model: _Model) -> None:
        on_disk = _list_versions(model.base_path)
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
        for version in wanted:
            if version in current:
                continue
            path = on_disk[version]
            stamp = _stamp(path)
            if model.failed.get(version, (None,))[0] == stamp:
                continue  # failed before and unchanged since: do not retry on every poll
            with self._lock:
                model.loading.add(version)
            try:
                new[version] = self._load_version(model.name, version, path)
                error = None
            except Exception as exc:
                log.exception("failed to load model %s version %d from %s",
                              model.name, version, path)
                error = (stamp, f"{type(exc).__name__}: {exc}")
            with self._lock:
                model.loading.discard(version)
                if error is None:
                    model.failed.pop(version, None)
                else:
                    model.failed[version] = error
        if not new and current:
            log.warning("model %s: no wanted version could be loaded; still serving %s",
                        model.name, sorted(current))
            return
        with self._lock:
            model.versions = dict(sorted(new.items()))
        for version in sorted(set(current) - set(new)):
            log.info("unloaded model %s version %d", model.name, version)

    def _load_version(self, name: str, version: int, path: str) -> _Version:
        _register_custom_ops()
        start = time.perf_counter()
        signature_defs = _read_signature_defs(path)
        loaded = tf.saved_model.load(path)
        functions = {key: loaded.signatures[key] for key in list(loaded.signatures.keys())}
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in signature_defs.items():
            sig_map.signature_def[key].CopyFrom(sig)
        packed = any_pb2.Any()
        packed.Pack(sig_map)
        ver = _Version(name, version, path, loaded, signature_defs, functions, packed)
        warm = self._run_warmup(ver) if self.warmup else 0
        log.info("loaded model %s version %d in %.2fs%s", name, version,
                 time.perf_counter() - start, f" ({warm} warmup requests)" if warm else "")
        return ver

    def _run_warmup(self, ver: _Version) -> int:
        path = _join(ver.path, _WARMUP_FILE)
        if not tf.io.gfile.exists(path):
            return 0
        done = 0
        for record in tf.data.TFRecordDataset(path).take(_MAX_WARMUP_RECORDS):
            entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if entry.WhichOneof("log_type") != "predict_log":
                continue
            try:
                self._run_predict(ver, entry.predict_log.request)
                done += 1
            except ServingError as exc:
                log.warning("model %s version %d: warmup request failed: %s",
                            ver.model, ver.version, exc)
        return done

    def models(self) -> Dict[str, List[int]]:
        """``{model: [served versions]}``."""
        with self._lock:
            return {name: sorted(m.versions) for name, m in self._models.items()}

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> int:
        """Load the models (unless already loaded), listen, and return the bound port."""
        if self._grpc_server is not None:
            return self._bound_port
        if not self._loaded_once:
            self.reload()
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.max_workers,
                                       thread_name_prefix="model-server"),
            options=[
                ("grpc.max_send_message_length", _GRPC_MAX_MESSAGE),
                ("grpc.max_receive_message_length", _GRPC_MAX_MESSAGE),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
                ("grpc.http2.max_ping_strikes", 0),
                ("grpc.so_reuseport", 0),  # a busy port is an error, not a silent share
            ],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            _PredictionService(self), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(self), server)
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") \
            else self.host
        address = f"{host}:{self.port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {address}: {exc}") from exc
        if not bound:
            raise OSError(f"cannot listen on {address}")
        server.start()
        self._grpc_server, self._bound_port = server, bound
        log.info("model server listening on %s:%d, serving %s", self.host, bound, self.models())
        if self.poll_seconds > 0:
            self._stop_polling.clear()
            self._poller = threading.Thread(target=self._poll, name="model-server-poll",
                                            daemon=True)
            self._poller.start()
        return bound

    def _poll(self) -> None:
        while not self._stop_polling.wait(self.poll_seconds):
            try:
                self.reload()
            except Exception:
                log.exception("model rescan failed")

    def stop(self, grace: Optional[float] = None) -> None:
        """Stop listening; in-flight requests get ``grace`` seconds to finish."""
        self._stop_polling.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
            self._poller = None
        server, self._grpc_server = self._grpc_server, None
        if server is not None:
            server.stop(grace).wait()

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
    def target(self) -> str:
        """``host:port`` for a client (after ``start()``)."""
        if self._bound_port is None:
            raise RuntimeError("the server is not started")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::", "[::]") else self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self._bound_port}"

    def __enter__(self) -> "ModelServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------------- resolving
    def _resolve(self, spec) -> _Version:
        if not spec.name:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified.")
        with self._lock:
            model = self._models.get(spec.name)
            versions = model.versions if model is not None else {}
            labels = model.labels if model is not None else {}
        choice = spec.WhichOneof("version_choice")
        if choice == "version_label":
            if spec.version_label not in labels:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Unrecognized servable version label: {spec.version_label}")
            number = labels[spec.version_label]
            request = f"Specific({spec.name}, {number})"
        elif choice == "version":
            number = spec.version.value
            request = f"Specific({spec.name}, {number})"
        else:
            number = max(versions) if versions else None
            request = f"Latest({spec.name})"
        if number is None or number not in versions:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Servable not found for request: {request}")
        return versions[number]

    # ----------------------------------------------------------------- Predict
    def predict(self, request):
        """Answer a ``PredictRequest`` in-process; raises ``ServingError``."""
        return self._run_predict(self._resolve(request.model_spec), request)

    def _run_predict(self, ver: _Version, request):
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        sig = ver.signature_defs.get(name)
        fn = ver.functions.get(name)
        if sig is None or fn is None:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"Serving signature name: \"{name}\" not found in signature def")
        outputs = self._output_names(sig, request.output_filter)
        tensors = self._input_tensors(sig, request.inputs)
        try:
            result = fn(**tensors)
        except tf.errors.OpError as exc:
            raise ServingError(_CODE_BY_VALUE.get(exc.error_code, grpc.StatusCode.UNKNOWN),
                               exc.message) from exc
        except (TypeError, ValueError) as exc:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc

        response = predict_pb2.PredictResponse()
        response.model_spec.name = ver.model
        response.model_spec.version.value = ver.version
        response.model_spec.signature_name = name
        for key in outputs:
            if key not in result:
                raise ServingError(grpc.StatusCode.INTERNAL,
                                   f"signature {name!r} did not produce output {key!r}")
            value = result[key]
            array = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
            response.outputs[key].CopyFrom(codec.to_tensor_proto(array))
        return response

    @staticmethod
    def _output_names(sig, output_filter) -> List[str]:
        if not output_filter:
            return list(sig.outputs)
        seen = set()
        for alias in output_filter:
            if alias not in sig.outputs:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"output tensor alias not found in signature: {alias} Outputs expected to "
                    f"be in the set {{{','.join(sorted(sig.outputs))}}}.")
            if alias in seen:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"duplicate output tensor alias: {alias}")
            seen.add(alias)
        return list(output_filter)

    @staticmethod
    def _input_tensors(sig, inputs) -> dict:
        expected = sorted(sig.inputs)
        sent = sorted(inputs)
        extra = [k for k in sent if k not in sig.inputs]
        missing = [k for k in expected if k not in inputs]
        if extra:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input tensor alias not found in signature: {extra[0]}. Inputs expected to be "
                f"in the set {{{','.join(expected)}}}.")
        if missing:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input size does not match signature: {len(sent)}!={len(expected)} "
                f"len({{{','.join(sent)}}}) != len({{{','.join(expected)}}}). Sent extra: {{}}. "
                f"Missing but required: {{{','.join(missing)}}}.")
        tensors = {}
        for key in expected:
            info, proto = sig.inputs[key], inputs[key]
            if proto.dtype != info.dtype:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input '{key}': expects {codec.dtype_name(info.dtype)} but "
                    f"{codec.dtype_name(proto.dtype)} is provided")
            try:
                array = codec.to_ndarray(proto)
            except (TypeError, ValueError) as exc:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input '{key}': {exc}") from exc
            shape = info.tensor_shape
            if not shape.unknown_rank:
                want = [d.size for d in shape.dim]
                if len(want) != array.ndim or any(
                        w >= 0 and w != g for w, g in zip(want, array.shape)):
                    raise ServingError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"input '{key}': shape {_shape_str(array.shape)} is incompatible with "
                        f"the signature's shape {_shape_str(want)}")
            tensors[key] = tf.constant(array, dtype=tf.dtypes.as_dtype(info.dtype))
        return tensors

    # ----------------------------------------------------------------- metadata / status
    def get_model_metadata(self, request):
        """Answer a ``GetModelMetadataRequest`` in-process; raises ``ServingError``."""
        if not request.model_spec.name:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing model_spec")
        if not request.metadata_field:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               "GetModelMetadataRequest must specify at least one metadata_field")
        for name in request.metadata_field:
            if name != METADATA_SIGNATURE_DEF:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Metadata field {name} is not supported")
        ver = self._resolve(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = ver.model
        response.model_spec.version.value = ver.version
        response.metadata[METADATA_SIGNATURE_DEF].CopyFrom(ver.metadata_any)
        return response

    def get_model_status(self, request):
        """Answer a ``GetModelStatusRequest`` in-process; raises ``ServingError``."""
        spec = request.model_spec
        if not spec.name:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing model name in request.")
        with self._lock:
            model = self._models.get(spec.name)
            if model is None:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find any versions of model {spec.name}")
            states = {}
            for version, (_, error) in model.failed.items():
                states[version] = ("END", error)
            for version in model.loading:
                states[version] = ("LOADING", "")
            for version in model.versions:
                states[version] = ("AVAILABLE", "")
            labels = dict(model.labels)
        choice = spec.WhichOneof("version_choice")
        if choice == "version_label":
            if spec.version_label not in labels:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Unrecognized servable version label: {spec.version_label}")
            only = labels[spec.version_label]
        else:
            only = spec.version.value if choice == "version" else None
        if only is not None:
            if only not in states:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find version {only} of model {spec.name}")
            states = {only: states[only]}
        if not states:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find any versions of model {spec.name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        state_enum = get_model_status_pb2.ModelVersionStatus.State
        for version in sorted(states, reverse=True):
            state, error = states[version]
            entry = response.model_version_status.add()
            entry.version = version
            entry.state = state_enum.Value(state)
            if error:
                entry.status.error_code = grpc.StatusCode.UNKNOWN.value[0]
                entry.status.error_message = error
        return response


# --------------------------------------------------------------------------- gRPC glue
def _answer(context, method, request):
    try:
        return method(request)
    except ServingError as exc:
        context.abort(exc.code, exc.message)
    except Exception as exc:  # never let a request take the server down
        log.exception("unexpected error while serving a request")
        context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")


def _unimplemented(context, name: str):
    context.abort(grpc.StatusCode.UNIMPLEMENTED,
                  f"{name} is not supported by this server; use Predict with a signature that "
                  "returns the scores")


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, server: ModelServer):
        self._server = server

    def Predict(self, request, context):
        return _answer(context, self._server.predict, request)

    def GetModelMetadata(self, request, context):
        return _answer(context, self._server.get_model_metadata, request)

    def Classify(self, request, context):
        _unimplemented(context, "Classify")

    def Regress(self, request, context):
        _unimplemented(context, "Regress")

    def MultiInference(self, request, context):
        _unimplemented(context, "MultiInference")


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, server: ModelServer):
        self._server = server

    def GetModelStatus(self, request, context):
        return _answer(context, self._server.get_model_status, request)

    def HandleReloadConfigRequest(self, request, context):
        def reload(req):
            try:
                self._server.reload_config(req.config)
            except ValueError as exc:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
            return model_management_pb2.ReloadConfigResponse()

        return _answer(context, reload, request)


def main(argv=None) -> None:
    """``python -m recsys_tf.serving.server --model_base_path saved_models --port 8500``."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_base_path")
    parser.add_argument("--model_name")
    parser.add_argument("--model_config_file")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--max_workers", type=int, default=8)
    parser.add_argument("--file_system_poll_wait_seconds", type=float, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server = ModelServer(model_base_path=args.model_base_path, model_name=args.model_name,
                         model_config_file=args.model_config_file, host=args.host,
                         port=args.port, max_workers=args.max_workers,
                         poll_seconds=args.file_system_poll_wait_seconds)
    server.start()
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop(grace=2)


if __name__ == "__main__":
    main()
