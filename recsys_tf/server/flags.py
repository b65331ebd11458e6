"""The bundled server's command-line flags, kept free of TensorFlow imports so that
``recsys-tf --help`` stays fast. Names are TF Serving's where they mean the same thing; each
flag also answers to its dashed spelling (``--rest_api_port`` / ``--rest-api-port``)."""
from __future__ import annotations

import argparse
from typing import Optional

PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def _flag(parser, *names, **kwargs):
    """Add a flag under TF Serving's underscore name and its dashed spelling."""
    spelled = []
    for name in names:
        spelled.append(name)
        dashed = name.replace("_", "-")
        if dashed != name and dashed not in spelled:
            spelled.append(dashed)
    return parser.add_argument(*spelled, **kwargs)


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def add_server_arguments(parser: argparse.ArgumentParser,
                         default_model_base_path: Optional[str] = None) -> None:
    """The server's flags; names are TF Serving's where they mean the same thing."""
    g = parser.add_argument_group("models (TF Serving flags)")
    _flag(g, "--model_config_file", "--model_config", dest="model_config_file", metavar="FILE",
          help="ModelServerConfig text proto listing the models to serve (names, base paths, "
          "model_version_policy, version_labels); --model_name/--model_base_path are then "
          "not used")
    _flag(g, "--model_base_path", metavar="DIR", default=None,
          help="with --model_name: the folder holding that model's numeric version folders; "
          "without it: a root of <name>/<version>/ folders, one model per sub-folder "
          f"(default {default_model_base_path or 'none'} when no config file is given)")
    _flag(g, "--model_name", metavar="NAME", help="name of the single model to serve")
    _flag(g, "--file_system_poll_wait_seconds", type=float, default=1.0, metavar="S",
          help="seconds between scans of the model folders for new or removed versions; "
          "0 scans once at start (default 1, as TF Serving)")
    _flag(g, "--model_config_file_poll_wait_seconds", type=float, default=0.0, metavar="S",
          help="seconds between re-reads of --model_config_file; 0 reads it once (default 0)")
    _flag(g, "--enable_model_warmup", type=_bool, default=True, metavar="BOOL",
          help="replay assets.extra/tf_serving_warmup_requests when a version loads; a failing "
          "warmup request fails the load (default true)")
    _flag(g, "--num_request_iterations_for_warmup", type=int, default=1, metavar="N",
          help="times each warmup record is replayed (default 1)")
    _flag(g, "--max_num_load_retries", type=int, default=5, metavar="N",
          help="retries of a version that failed to load while its folder is unchanged "
          "(default 5; a changed folder is retried at the next scan)")
    _flag(g, "--load_retry_interval_micros", type=int, default=60_000_000, metavar="US",
          help="wait between those retries (default 60000000 = 1 min)")
    _flag(g, "--saved_model_tags", default="serve", metavar="TAGS",
          help="comma-separated MetaGraph tags to load (default serve)")

    g = parser.add_argument_group("network (TF Serving flags)")
    _flag(g, "--port", type=int, default=8500,
          help="gRPC port (default 8500; 0 picks a free port)")
    _flag(g, "--grpc_socket_path", default="", metavar="PATH",
          help="also serve gRPC on this Unix domain socket (clients dial unix:PATH; default "
          "none)")
    _flag(g, "--rest_api_port", type=int, default=0, metavar="PORT",
          help="REST API port: /v1/models/... and Prometheus metrics; 0 disables it (default 0)")
    _flag(g, "--rest_api_num_threads", type=int, default=0, metavar="N",
          help="REST connections served at once (default max(8, 4 x CPUs))")
    _flag(g, "--rest_api_timeout_in_ms", type=int, default=30000, metavar="MS",
          help="REST connection read/idle timeout (default 30000)")
    _flag(g, "--grpc_max_threads", "--max_workers", dest="grpc_max_threads", type=int,
          default=0, metavar="N", help="gRPC request threads (default max(16, 4 x CPUs))")
    _flag(g, "--grpc_channel_arguments", default="", metavar="K=V,...",
          help="extra gRPC server channel arguments, e.g. grpc.max_connection_age_ms=60000")
    _flag(g, "--ssl_config_file", metavar="FILE",
          help="SSLConfig text proto (server_key, server_cert, custom_ca, client_verify): "
          "serve gRPC and REST over TLS")
    _flag(g, "--monitoring_config_file", metavar="FILE",
          help="MonitoringConfig text proto (prometheus_config { enable path }); without it "
          f"metrics are served on {PROMETHEUS_PATH} of the REST port")

    g = parser.add_argument_group("batching and threads (TF Serving flags)")
    _flag(g, "--enable_batching", type=_bool, nargs="?", const=True, default=False,
          metavar="BOOL", help="batch concurrent Predict requests server-side (default false)")
    _flag(g, "--batching_parameters_file", metavar="FILE",
          help="BatchingParameters text proto (max_batch_size, batch_timeout_micros, "
          "max_enqueued_batches, num_batch_threads, allowed_batch_sizes, "
          "pad_variable_length_inputs); needs --enable_batching")
    _flag(g, "--enable_serialization_as_tensor_content", type=_bool, nargs="?", const=True,
          default=False, metavar="BOOL",
          help="answer Predict with outputs in tensor_content instead of the typed fields "
          "(float_val, int64_val, string_val, ...); default false, as TF Serving")
    _flag(g, "--enable_signature_method_name_check", type=_bool, nargs="?", const=True,
          default=False, metavar="BOOL",
          help="Classify, Regress and MultiInference take only signatures whose method name is "
          "tensorflow/serving/classify (regress); default false, as TF Serving")
    _flag(g, "--tensorflow_session_parallelism", type=int, default=0, metavar="N",
          help="TensorFlow intra- and inter-op threads (0: automatic)")
    _flag(g, "--tensorflow_intra_op_parallelism", type=int, default=0, metavar="N",
          help="TensorFlow intra-op threads; overrides the above (0: automatic)")
    _flag(g, "--tensorflow_inter_op_parallelism", type=int, default=0, metavar="N",
          help="TensorFlow inter-op threads; overrides the above (0: automatic)")

    g = parser.add_argument_group("this server only")
    _flag(g, "--host", default="127.0.0.1",
          help="bind address for gRPC and REST (default 127.0.0.1, loopback only; TF Serving "
          "always binds 0.0.0.0)")
    _flag(g, "--max_message_bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES, metavar="B",
          help="largest gRPC request or REST body accepted (default 64 MiB; TF Serving "
          "accepts up to 2 GiB)")
    _flag(g, "--model_root", metavar="DIR",
          help="every base path and version folder must lie inside DIR (default: the folders "
          "holding the models the server starts with)")
    _flag(g, "--ssl_cert_file", metavar="PEM", help="TLS server certificate (with --ssl_key_file)")
    _flag(g, "--ssl_key_file", metavar="PEM", help="TLS server private key")
    _flag(g, "--ssl_ca_file", metavar="PEM",
          help="CA for client certificates; when given, clients must present one")
    _flag(g, "--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
          help="logging level (default INFO: one line per load, unload and failed request)")
