"""TF Serving's gRPC services: PredictionService and ModelService.

``PredictionService`` (handed the ``Registry``, the ``Runner`` and the object answering
Classify, Regress and MultiInference) and ``ModelService`` (handed the ``Registry``) answer
requests in-process (``predict``, ``get_model_metadata``, ``classify``, ``regress``,
``multi_inference``, ``get_model_status``, ``handle_reload_config``; the REST API calls the
same methods), and ``grpc_handler`` exposes them over gRPC as raw-bytes handlers, so that an
unparsable message is INVALID_ARGUMENT rather than gRPC's INTERNAL and every call is counted
in the metrics.

Classify, Regress and MultiInference go to the ``inference`` object the service is
constructed with: anything with ``classify(request)``, ``regress(request)`` and
``multi_inference(request)`` methods: ``ModelServer`` hands it ``InferenceService(registry,
runner)``; a service made without one (``UnimplementedInference``) answers UNIMPLEMENTED.

Example::

    prediction = PredictionService(registry, runner)
    handler = grpc_handler(prediction, ModelService(registry), registry, metrics)
"""
from __future__ import annotations

import logging
import time

import grpc
from google.protobuf.message import DecodeError
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    predict_pb2,
    regression_pb2,
)

from recsys_tf.server.metrics import Metrics
from recsys_tf.server.registry import Registry
from recsys_tf.server.runner import Runner
from recsys_tf.wire.contract import METADATA_SIGNATURE_DEF
from recsys_tf.wire.errors import ServingError, invalid, not_found

# The whole server logs under one name, whichever module a message comes from.
log = logging.getLogger("recsys_tf.server.server")


_STATE = get_model_status_pb2.ModelVersionStatus.State


_UNIMPLEMENTED = ("{name} is not available: this server was started without an inference "
                  "service; call Predict with the signature that returns the scores")


class UnimplementedInference:
    """The default answer to Classify, Regress and MultiInference: UNIMPLEMENTED."""

    @staticmethod
    def _refuse(name: str):
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED, _UNIMPLEMENTED.format(name=name))

    def classify(self, request):
        self._refuse("Classify")

    def regress(self, request):
        self._refuse("Regress")

    def multi_inference(self, request):
        self._refuse("MultiInference")


class PredictionService:
    """PredictionService's answers, in-process; each method raises ``ServingError``.

    Args:
      registry: resolves a request's ``ModelSpec`` to a loaded version.
      runner: runs a version's signatures.
      inference: answers Classify / Regress / MultiInference (default:
        ``UnimplementedInference()``).
    """

    def __init__(self, registry: Registry, runner: Runner, inference=None):
        self.registry = registry
        self.runner = runner
        self.inference = inference if inference is not None else UnimplementedInference()

    # ----------------------------------------------------------------- Predict
    def predict(self, request):
        """Answer a ``PredictRequest``."""
        if not request.HasField("model_spec"):
            raise invalid("Missing ModelSpec")
        return self.runner.predict(self.registry.resolve(request.model_spec), request)

    def classify(self, request):
        return self.inference.classify(request)

    def regress(self, request):
        return self.inference.regress(request)

    def multi_inference(self, request):
        return self.inference.multi_inference(request)

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
        ver = self.registry.resolve(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = ver.model
        response.model_spec.version.value = ver.version
        response.metadata[METADATA_SIGNATURE_DEF].CopyFrom(ver.metadata_any)
        return response



class ModelService:
    """ModelService's answers, in-process; each method raises ``ServingError``.

    Args:
      registry: the served models.
    """

    def __init__(self, registry: Registry):
        self.registry = registry

    def get_model_status(self, request):
        """Answer a ``GetModelStatusRequest`` in-process; raises ``ServingError``.

        As in TF Serving, a version label in the request is not resolved: all versions are
        reported (a version number narrows the answer to that version).
        """
        if not request.HasField("model_spec"):
            raise invalid("Missing ModelSpec")
        spec = request.model_spec
        states = self.registry.states(spec.name)
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
            self.registry.reload_config(request.config)
        except ValueError as exc:
            raise invalid(str(exc)) from None
        response = model_management_pb2.ReloadConfigResponse()
        response.status.SetInParent()
        return response


# --------------------------------------------------------------------------- gRPC glue
def grpc_handler(prediction: PredictionService, model_service: ModelService,
                 registry: Registry, metrics: Metrics) -> grpc.GenericRpcHandler:
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
                model = registry.served_name(spec.name) if spec is not None else ""
                return fn(request)
            except ServingError as exc:
                code, message = exc.code, exc.message
            except Exception as exc:  # never let a request take the server down
                log.exception("unexpected error while serving %s", api)
                code, message = grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}"
            finally:
                metrics.record_request(model, api, "GRPC", code.name,
                                              (time.perf_counter() - start) * 1e6)
            log.warning("%s %s: %s: %s", api, model or "-", code.name, message[:300])
            context.abort(code, message)

        return grpc.unary_unary_rpc_method_handler(
            handle, request_deserializer=None,
            response_serializer=lambda response: response.SerializeToString())

    prediction = {
        "Predict": method("predict", predict_pb2.PredictRequest, prediction.predict),
        "GetModelMetadata": method("GetModelMetadata",
                                   get_model_metadata_pb2.GetModelMetadataRequest,
                                   prediction.get_model_metadata),
        "Classify": method("classify", classification_pb2.ClassificationRequest,
                           prediction.classify),
        "Regress": method("regress", regression_pb2.RegressionRequest, prediction.regress),
        "MultiInference": method("MultiInference", inference_pb2.MultiInferenceRequest,
                                 prediction.multi_inference),
    }
    model_service = {
        "GetModelStatus": method("GetModelStatus", get_model_status_pb2.GetModelStatusRequest,
                                 model_service.get_model_status),
        "HandleReloadConfigRequest": method(
            "HandleReloadConfigRequest", model_management_pb2.ReloadConfigRequest,
            model_service.handle_reload_config),
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
