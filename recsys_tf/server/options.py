"""``ServerOptions``: everything the model server is told, in one object (TF Serving's
``ServerOptions`` in ``model_servers/server.h``).

Built from the command line (``ServerOptions.from_args(args)``) or from keywords
(``ServerOptions(model_base_path="saved_models", port=0)``); checked and resolved once, at
construction: the TLS configuration is read, the batching parameters parsed, the monitoring
config applied. The parts of the server (registry, loader, runner, services, REST API) are each
handed this object, or the few values of it they use.

Args (all keywords; defaults are TF Serving's where the flag is TF Serving's):
  model_base_path: with ``model_name``, the folder holding numeric version folders; without it
    (and without a config file), a root holding ``<name>/<version>/`` for every model to serve.
  model_name: the name clients use for the single model.
  model_config_file: a ``ModelServerConfig`` text proto (``models.config``).
  host: bind address for gRPC and REST (default 127.0.0.1: loopback only).
  port: gRPC port (default 8500; 0 picks a free one).
  grpc_socket_path: also listen for gRPC on this Unix socket (``unix:PATH``; default none).
  max_workers: gRPC request threads (``--grpc_max_threads``; default ``max(16, 4 x CPUs)``).
  poll_seconds: rescan the version folders this often (``--file_system_poll_wait_seconds``;
    0: once at start).
  version_policy: for the single-model and root forms: ``"latest"`` (default), an int N
    (latest N), ``"all"``, or a list of versions.
  warmup: replay ``assets.extra/tf_serving_warmup_requests`` when a version loads (True).
  rest_api_port: REST port (None: no REST API; 0: a free port).
  rest_api_num_threads: REST connections served at once (default ``max(8, 4 x CPUs)``).
  rest_api_timeout_in_ms: idle/read timeout of a REST connection (30000).
  enable_batching, batching_parameters: dynamic batching; ``batching_parameters`` is a
    ``BatchingOptions``, a ``BatchingParameters`` proto or a text-proto file path.
  model_config_file_poll_wait_seconds: re-read the config file this often (0: never).
  max_message_bytes: largest request accepted (gRPC message or REST body; 64 MiB).
  ssl_config_file: TF Serving's ``SSLConfig`` text proto; or ``ssl_cert_file``/``ssl_key_file``
    (PEM files) with optional ``ssl_ca_file`` (clients must then present a certificate).
  monitoring_config_file: TF Serving's ``MonitoringConfig`` text proto; without it the
    Prometheus metrics are on ``/monitoring/prometheus/metrics`` of the REST port
    (``enable_metrics=False`` turns them off).
  model_root: folder every base path must lie in (default: the folders holding the startup
    models).
  num_request_iterations_for_warmup: times each warmup record is replayed (1).
  max_num_load_retries, load_retry_interval_micros: retries of a failed, unchanged version
    (5, one minute apart).
  tensorflow_session_parallelism, tensorflow_intra_op_parallelism,
  tensorflow_inter_op_parallelism: the thread pools of each version's TensorFlow session
    (0: automatic; intra/inter override the first).
  grpc_channel_arguments: ``"key=value,..."`` passed to the gRPC server.
  saved_model_tags: comma-separated MetaGraph tags to load (``serve``).
  enable_serialization_as_tensor_content: answer with ``tensor_content`` instead of the typed
    fields (``float_val``, ...); TF Serving's default is false.
  enable_signature_method_name_check: Classify / Regress / MultiInference check the
    signature's method name (TF Serving's default is false: inputs and outputs are checked).

Example::

    options = ServerOptions(model_base_path="saved_models", port=0, rest_api_port=0)
    server = ModelServer(options)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from recsys_tf.server.batching import BatchingOptions
from recsys_tf.server.flags import DEFAULT_MAX_MESSAGE_BYTES, PROMETHEUS_PATH
from recsys_tf.wire import protos

INT32_MAX = 2**31 - 1


def parse_channel_arguments(text: str) -> List[Tuple[str, object]]:
    """``"a=1,b=x"`` -> ``[("a", 1), ("b", "x")]``; ValueError on an item without ``=``."""
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


def read_ssl_config(config_file, cert_file, key_file, ca_file):
    """An ``SSLConfig`` from TF Serving's text proto or from PEM files; None without TLS."""
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


def batching_options(value) -> BatchingOptions:
    """``BatchingOptions`` from None (defaults), itself, a proto or a text-proto file path."""
    if value is None:
        return BatchingOptions()
    if isinstance(value, BatchingOptions):
        value.validate()
        return value
    if isinstance(value, str):
        value = protos.read_text_file(value, protos.BatchingParameters)
    return BatchingOptions.from_proto(value)


@dataclass
class ServerOptions:
    """The model server's options (see the module docstring for each one)."""

    model_base_path: Optional[str] = None
    model_name: Optional[str] = None
    model_config_file: Optional[str] = None
    host: str = "127.0.0.1"
    port: int = 8500
    grpc_socket_path: Optional[str] = None
    max_workers: Optional[int] = None
    poll_seconds: float = 0
    version_policy: object = None
    warmup: bool = True
    rest_api_port: Optional[int] = None
    rest_api_num_threads: Optional[int] = None
    rest_api_timeout_in_ms: int = 30000
    enable_batching: bool = False
    batching_parameters: object = None
    model_config_file_poll_wait_seconds: float = 0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ssl_config_file: Optional[str] = None
    ssl_cert_file: Optional[str] = None
    ssl_key_file: Optional[str] = None
    ssl_ca_file: Optional[str] = None
    monitoring_config_file: Optional[str] = None
    enable_metrics: bool = True
    model_root: Optional[str] = None
    num_request_iterations_for_warmup: int = 1
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60_000_000
    tensorflow_session_parallelism: int = 0
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0
    grpc_channel_arguments: str = ""
    saved_model_tags: str = "serve"
    enable_serialization_as_tensor_content: bool = False
    enable_signature_method_name_check: bool = False

    # resolved once from the above (not arguments)
    batching: Optional[BatchingOptions] = field(init=False, default=None)
    ssl_config: object = field(init=False, default=None)
    metrics_path: Optional[str] = field(init=False, default=None)
    channel_arguments: List[Tuple[str, object]] = field(init=False, default_factory=list)
    tags: Tuple[str, ...] = field(init=False, default=())

    def __post_init__(self):
        cpus = os.cpu_count() or 1
        self.port = int(self.port)
        self.max_workers = int(self.max_workers or max(16, 4 * cpus))
        self.rest_api_num_threads = int(self.rest_api_num_threads or max(8, 4 * cpus))
        self.poll_seconds = float(self.poll_seconds or 0)
        self.model_config_file_poll_wait_seconds = float(
            self.model_config_file_poll_wait_seconds or 0)
        self.num_request_iterations_for_warmup = max(1, int(
            self.num_request_iterations_for_warmup))
        self.max_num_load_retries = max(0, int(self.max_num_load_retries))
        self.max_message_bytes = int(self.max_message_bytes)
        if not 0 < self.max_message_bytes <= INT32_MAX:
            raise ValueError(f"max_message_bytes must be in [1, 2**31 - 1], got "
                             f"{self.max_message_bytes}")
        if self.model_config_file is not None and (self.model_name is not None or
                                                   self.model_base_path is not None):
            raise ValueError("give either model_config_file or model_name/model_base_path")
        if self.model_config_file is None and self.model_base_path is None:
            raise ValueError("give model_base_path (with or without model_name) "
                             "or model_config_file")
        self.tags = tuple(t.strip() for t in self.saved_model_tags.split(",") if t.strip())
        self.channel_arguments = parse_channel_arguments(self.grpc_channel_arguments)
        self.ssl_config = read_ssl_config(self.ssl_config_file, self.ssl_cert_file,
                                          self.ssl_key_file, self.ssl_ca_file)
        self.metrics_path = PROMETHEUS_PATH if self.enable_metrics else None
        if self.monitoring_config_file:
            monitoring = protos.read_text_file(self.monitoring_config_file,
                                               protos.MonitoringConfig)
            prometheus = monitoring.prometheus_config
            self.metrics_path = (prometheus.path or PROMETHEUS_PATH) if prometheus.enable \
                else None
        if self.batching_parameters is not None and not self.enable_batching:
            raise ValueError("batching_parameters_file is set without enable_batching")
        self.batching = batching_options(self.batching_parameters) if self.enable_batching \
            else None

    @property
    def rest_api_timeout(self) -> float:
        """The REST connection timeout in seconds."""
        return max(0.001, self.rest_api_timeout_in_ms / 1000.0)

    @property
    def load_retry_interval(self) -> float:
        """Seconds between retries of a failed version."""
        return max(0.0, self.load_retry_interval_micros / 1e6)

    def session_config(self):
        """The ``ConfigProto`` of each version's session: the thread pools asked for."""
        from tensorflow.core.protobuf import config_pb2

        config = config_pb2.ConfigProto()
        intra = self.tensorflow_intra_op_parallelism or self.tensorflow_session_parallelism
        inter = self.tensorflow_inter_op_parallelism or self.tensorflow_session_parallelism
        if intra:
            config.intra_op_parallelism_threads = int(intra)
        if inter:
            config.inter_op_parallelism_threads = int(inter)
        return config

    @classmethod
    def from_args(cls, args, default_model_base_path: Optional[str] = None) -> "ServerOptions":
        """From the parsed flags of ``recsys_tf.server.flags.add_server_arguments``."""
        base = args.model_base_path
        if args.model_config_file is None and base is None:
            base = default_model_base_path
        return cls(
            model_base_path=None if args.model_config_file else base,
            model_name=None if args.model_config_file else args.model_name,
            model_config_file=args.model_config_file, host=args.host, port=args.port,
            grpc_socket_path=args.grpc_socket_path or None,
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
            saved_model_tags=args.saved_model_tags,
            enable_serialization_as_tensor_content=args.enable_serialization_as_tensor_content,
            enable_signature_method_name_check=args.enable_signature_method_name_check)
