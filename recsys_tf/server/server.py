"""A model server that keeps TensorFlow Serving's promises.

``ModelServer`` serves SavedModels laid out the way ``tensorflow_model_server`` expects
(``<base_path>/<version>/saved_model.pb``) through the same services, messages and status
codes, so a client written against TF Serving works unchanged against it:

* gRPC ``tensorflow.serving.PredictionService``: ``Predict`` (with ``output_filter``) and
  ``GetModelMetadata`` (``signature_def``); ``Classify``, ``Regress`` and ``MultiInference``
  answer UNIMPLEMENTED;
* gRPC ``tensorflow.serving.ModelService``: ``GetModelStatus`` and
  ``HandleReloadConfigRequest``;
* the REST API on ``rest_api_port`` (``recsys_tf.server.rest``): ``/v1/models/NAME[/versions/N
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
fails the load; each signature no record names is then run once on made-up rows, whose
failure is ignored), then requests are routed to it, then the old version is let go --
requests in flight finish on the version they started on, so none fails during a swap. A
version that fails to load is reported in ``GetModelStatus`` (state END with the error) and
the served version stays. ``poll_seconds`` (``--file_system_poll_wait_seconds``) rescans the
folders.

Safe defaults: the server binds 127.0.0.1 unless told otherwise; a request over
``max_message_bytes`` (64 MiB) is refused; model names are plain names and every base path
and version folder (symlinks resolved) must lie inside the model root -- by default the
folders holding the models the server was started with -- so a reload request cannot point
the server at arbitrary files. TLS is optional (``ssl_config_file`` as TF Serving reads it, or
a certificate and key).

This module assembles ``ModelServer`` (construction, listening, stopping) and the command
line; its parts live beside it: ``registry`` (served models, config, rescans, hot swap,
polling), ``servable`` (loading a version, warmup), ``signatures`` (running a signature,
request checks) and ``services`` (PredictionService / ModelService handlers, gRPC glue).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from concurrent import futures
from typing import Dict, List, Optional, Tuple

import grpc
import tensorflow as tf

from recsys_tf.wire import protos
from recsys_tf.server.batching import BatchingOptions, BatchScheduler
from recsys_tf.wire.errors import ServingError
from recsys_tf.server.flags import (  # noqa: F401  (re-exported)
    DEFAULT_MAX_MESSAGE_BYTES,
    PROMETHEUS_PATH,
    add_server_arguments,
)
from recsys_tf.server.metrics import Metrics
from recsys_tf.server.registry import (  # noqa: F401  (check_model_name: re-exported)
    ModelRegistry,
    _Model,
    _Policy,
    check_model_name,
)
from recsys_tf.server.loader import (  # noqa: F401  (DEFAULT_SIGNATURE: re-exported)
    DEFAULT_SIGNATURE,
    VersionLoader,
    _parent,
)
from recsys_tf.server.services import (  # noqa: F401  (METADATA_SIGNATURE_DEF: re-exported)
    METADATA_SIGNATURE_DEF,
    ServiceHandlers,
    _handlers,
)
from recsys_tf.server.runner import SignatureRunner

__all__ = ["ModelServer", "ServingError", "build_parser", "add_server_arguments",
           "server_from_args", "main"]

# The whole server logs under one name, whichever module a message comes from.
log = logging.getLogger("recsys_tf.server.server")

_INT32_MAX = 2**31 - 1


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


# --------------------------------------------------------------------------- the server
class ModelServer(ModelRegistry, VersionLoader, SignatureRunner, ServiceHandlers):
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
        # threads making loaded versions' batch functions (VersionLoader); stop() ends them:
        # a process that exits while one runs TensorFlow aborts
        self._warm_stop = threading.Event()
        self._warm_lock = threading.Lock()
        self._warm_threads: List[threading.Thread] = []

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

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> int:
        """Load the models (unless already loaded), listen, and return the bound gRPC port."""
        if self._grpc_server is not None:
            return self._bound_port
        self._warm_stop.clear()
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
            from recsys_tf.server.rest import RestServer

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
        self._warm_stop.set()       # batch functions still being made: end after the one in hand
        with self._warm_lock:
            warming, self._warm_threads = self._warm_threads, []
        for thread in warming:
            thread.join(timeout=60)

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
        prog="python -m recsys_tf.server.server",
        description="TF Serving-compatible model server (gRPC PredictionService/ModelService, "
        "REST API, Prometheus metrics).")
    add_server_arguments(parser)
    return parser


def main(argv=None) -> int:
    """``python -m recsys_tf.server.server --model_base_path saved_models --port 8500``."""
    args = build_parser().parse_args(argv)
    return run_server(args)


if __name__ == "__main__":
    raise SystemExit(main())
