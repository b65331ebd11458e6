"""A model server that keeps TensorFlow Serving's promises.

``ModelServer`` serves SavedModels laid out the way ``tensorflow_model_server`` expects
(``<base_path>/<version>/saved_model.pb``) through the same services, messages and status
codes, so a client written against TF Serving works unchanged against it:

* gRPC ``tensorflow.serving.PredictionService``: ``Predict`` (with ``output_filter``) and
  ``GetModelMetadata`` (``signature_def``); ``Classify``, ``Regress`` and ``MultiInference``
  on serialized ``tf.Example``s (``recsys_tf.server.inference``);
* gRPC ``tensorflow.serving.ModelService``: ``GetModelStatus`` and
  ``HandleReloadConfigRequest``;
* the REST API on ``rest_api_port`` (``recsys_tf.server.rest``): ``/v1/models/NAME[/versions/N
  |/labels/L]`` status and ``/metadata``, ``:predict`` with ``instances`` or ``inputs``,
  ``:classify`` / ``:regress``, and Prometheus metrics on ``/monitoring/prometheus/metrics``.

A version runs as TF Serving's SavedModel bundle runs it: loaded into a TensorFlow graph and
session of its own, each SignatureDef fed and fetched by tensor name, so shapes are checked by
the graph (not by the shapes the signature declares), and outputs are answered in the typed
fields (``float_val``, ...) unless ``enable_serialization_as_tensor_content`` is set.

Status codes follow TF Serving: an unknown model or version is NOT_FOUND ("Servable not found
for request: Latest(name)"); an unknown version label and a bad request (missing, extra or
misnamed input, wrong dtype, unparsable tensor, inputs the graph cannot compute, unknown
output filter, metadata without fields) INVALID_ARGUMENT; an unknown signature
FAILED_PRECONDITION; a full batching queue UNAVAILABLE; a message over the size limit
RESOURCE_EXHAUSTED. Errors TensorFlow raises while running a model keep the code TensorFlow
gave them, except INTERNAL, which is answered as INVALID_ARGUMENT: nothing a client sends
turns into INTERNAL or takes the server down.

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
a certificate and key). gRPC can also be served on a Unix socket (``grpc_socket_path``).

The server is composed, as TF Serving's ``server.h`` composes it: one ``ServerOptions``
(``recsys_tf.server.options``, built from the flags or from keywords); a ``Registry``
(``registry``: the models, their versions and the lock guarding them, rescans, hot swap,
polling); a ``VersionLoader`` (``loader``: a version into a session, warmup) and a ``Runner``
(``runner``: running signatures, request checks, batching); the gRPC ``PredictionService``
and ``ModelService`` (``services``) and the REST API (``rest``), each handed the registry and
the runner. ``ModelServer`` only builds and wires them, and starts and stops them.
"""
from __future__ import annotations

import argparse
import logging
import signal
from concurrent import futures
from typing import Dict, List, Optional

import grpc

from recsys_tf.server.flags import add_server_arguments
from recsys_tf.server.inference import InferenceService
from recsys_tf.server.loader import VersionLoader
from recsys_tf.server.metrics import Metrics
from recsys_tf.server.options import INT32_MAX, ServerOptions
from recsys_tf.server.registry import Registry
from recsys_tf.server.runner import Runner
from recsys_tf.server.services import (
    ModelService,
    PredictionService,
    grpc_handler,
)
from recsys_tf.wire.errors import ServingError

__all__ = ["ModelServer", "ServerOptions", "ServingError", "build_parser",
           "add_server_arguments", "server_from_args", "main"]

# The whole server logs under one name, whichever module a message comes from.
log = logging.getLogger("recsys_tf.server.server")


def _ssl_credentials(ssl_config) -> grpc.ServerCredentials:
    ca = ssl_config.custom_ca.encode() if ssl_config.custom_ca else None
    return grpc.ssl_server_credentials(
        [(ssl_config.server_key.encode(), ssl_config.server_cert.encode())],
        root_certificates=ca, require_client_auth=bool(ssl_config.client_verify))


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


# --------------------------------------------------------------------------- the server
class ModelServer:
    """TF Serving-compatible gRPC (and REST) server for SavedModel version folders.

    ``ModelServer(options)`` with a ``ServerOptions``, or ``ModelServer(**keywords)`` with the
    same keywords ``ServerOptions`` takes (``model_base_path=..., port=0, ...``).

    Args:
      options: a ``ServerOptions`` (then no keywords).
      inference: the object answering Classify / Regress / MultiInference (anything with
        ``classify``, ``regress`` and ``multi_inference`` methods taking the request protos);
        default ``InferenceService(registry, runner)`` (``recsys_tf.server.inference``).
      **keywords: ``ServerOptions`` fields, when ``options`` is not given.

    The parts, public attributes: ``options``, ``metrics``, ``runner``, ``loader``,
    ``registry``, ``prediction`` (``PredictionService``), ``model_service``.
    """

    def __init__(self, options: Optional[ServerOptions] = None, inference=None, **keywords):
        if options is None:
            options = ServerOptions(**keywords)
        elif keywords:
            raise TypeError(f"give a ServerOptions or keywords, not both: {sorted(keywords)}")
        self.options = options
        self.metrics = Metrics()
        self.runner = Runner(options.batching, options.max_message_bytes,
                             options.enable_serialization_as_tensor_content,
                             on_batch=self.metrics.record_batch)
        self.loader = VersionLoader(self.runner, options.tags, options.session_config(),
                                    options.warmup, options.num_request_iterations_for_warmup)
        self.registry = Registry(options, self.loader, self.metrics)
        if inference is None:
            inference = InferenceService(
                self.registry, self.runner,
                method_name_check=options.enable_signature_method_name_check)
        self.prediction = PredictionService(self.registry, self.runner, inference)
        self.model_service = ModelService(self.registry)
        self._grpc_server = None
        self._rest = None
        self._bound_port: Optional[int] = None

    # ----------------------------------------------------------------- delegation
    def reload(self) -> Dict[str, List[int]]:
        """Rescan the version folders (``Registry.reload``)."""
        return self.registry.reload()

    def reload_config(self, config) -> Dict[str, List[int]]:
        """Serve a new ``ModelServerConfig`` (``Registry.reload_config``)."""
        return self.registry.reload_config(config)

    def models(self) -> Dict[str, List[int]]:
        """``{model: [served versions]}``."""
        return self.registry.models()

    def predict(self, request):
        """Answer a ``PredictRequest`` in-process; raises ``ServingError``."""
        return self.prediction.predict(request)

    def get_model_metadata(self, request):
        return self.prediction.get_model_metadata(request)

    def get_model_status(self, request):
        return self.model_service.get_model_status(request)

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> int:
        """Load the models (unless already loaded), listen, and return the bound gRPC port."""
        if self._grpc_server is not None:
            return self._bound_port
        options = self.options
        if not self.registry.loaded_once:
            self.registry.reload()
        self.runner.start()
        overridden = {key for key, _ in options.channel_arguments}
        channel = [(k, v) for k, v in [
            ("grpc.max_send_message_length", INT32_MAX),
            ("grpc.max_receive_message_length", options.max_message_bytes),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_ping_strikes", 0),
            ("grpc.so_reuseport", 0),  # a busy port is an error, not a silent share
        ] if k not in overridden] + options.channel_arguments
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=options.max_workers,
                                       thread_name_prefix="model-server"),
            handlers=[grpc_handler(self.prediction, self.model_service, self.registry,
                                   self.metrics)],
            options=channel, maximum_concurrent_rpcs=64 * options.max_workers)
        address = f"{_bracket(options.host)}:{options.port}"
        try:
            if options.ssl_config is not None:
                bound = server.add_secure_port(address, _ssl_credentials(options.ssl_config))
            else:
                bound = server.add_insecure_port(address)
            if bound and options.grpc_socket_path:
                socket_address = f"unix:{options.grpc_socket_path}"
                if not server.add_insecure_port(socket_address):
                    raise RuntimeError(f"cannot listen on {socket_address}")
        except RuntimeError as exc:
            self.runner.stop()
            raise OSError(f"cannot listen on {address}: {exc}") from exc
        if not bound:
            self.runner.stop()
            raise OSError(f"cannot listen on {address}")
        if options.rest_api_port is not None:
            from recsys_tf.server.rest import RestServer

            try:
                self._rest = RestServer(options, self.registry, self.runner, self.prediction,
                                        self.model_service, self.metrics)
            except OSError:
                server.stop(None)
                self.runner.stop()
                raise
        server.start()
        self._grpc_server, self._bound_port = server, bound
        log.info("model server listening on %s:%d%s%s, serving %s", options.host, bound,
                 " (TLS)" if options.ssl_config is not None else "",
                 f" and unix:{options.grpc_socket_path}" if options.grpc_socket_path else "",
                 self.models())
        if self._rest is not None:
            self._rest.start()
            log.info("REST API listening on %s:%d%s", options.host, self._rest.port,
                     f"; metrics on {options.metrics_path}" if options.metrics_path else "")
        self.registry.start_polling()
        return bound

    def stop(self, grace: Optional[float] = None) -> None:
        """Stop listening; in-flight requests get ``grace`` seconds to finish."""
        self.registry.stop_polling()
        rest, self._rest = self._rest, None
        if rest is not None:
            rest.stop()
        server, self._grpc_server = self._grpc_server, None
        if server is not None:
            server.stop(grace).wait()
        self.runner.stop()

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
        host = self.options.host
        host = "127.0.0.1" if host in ("0.0.0.0", "", "::", "[::]") else host
        return _bracket(host)

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
    """A ``ModelServer`` from parsed flags (``ServerOptions.from_args``)."""
    return ModelServer(ServerOptions.from_args(args, default_model_base_path))


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
