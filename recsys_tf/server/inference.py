"""TF Serving's Classify, Regress and MultiInference on serialized ``tf.Example``s.

Contract (TF Serving's ``classifier.cc``, ``regressor.cc``, ``multi_inference.cc`` and
``util.cc``; the REST forms are ``util/json_tensor.cc``'s):

* the request's ``input`` (an ``ExampleList``, or an ``ExampleListWithContext`` whose context
  is merged into every example: the serialized context followed by the serialized example,
  so an example's feature wins over a context feature of the same name) becomes one string
  tensor ``[num_examples]`` fed to the signature's only input, ``inputs``;
* Classify reads the outputs ``classes`` ([batch, n] string) and/or ``scores`` ([batch, n]
  float) and answers one ``Classifications`` per example; Regress reads ``outputs`` ([batch]
  or [batch, 1] float) and answers one ``Regression`` per example;
* MultiInference runs several Classify / Regress tasks of one model on the same examples;
* a signature is chosen by ``model_spec.signature_name`` ("" = ``serving_default``); as in
  TF Serving (``--enable_signature_method_name_check``, default off) its ``method_name`` is
  only checked when ``method_name_check`` is set, otherwise the signature's inputs and
  outputs decide;
* failures raise :class:`~recsys_tf.wire.errors.ServingError` with TF Serving's code and
  message; the response's ``model_spec`` carries the requested name, the signature name
  (``serving_default`` for "") and the served version.

``InferenceService`` needs two collaborators: ``registry.resolve(model_spec)`` returning a
loaded version (``.model``, ``.version``, ``.signature_defs``: name -> SignatureDef) and
``runner.run(version, signature_name, inputs, output_keys=None)`` running a signature on
numpy inputs keyed by the SignatureDef's input keys and returning numpy outputs keyed by its
output keys.

Args:
    registry: resolves a ``ModelSpec`` to a loaded version (raises NOT_FOUND and the like).
    runner: runs a signature of a version.
    method_name_check: TF Serving's ``--enable_signature_method_name_check`` (default False).

Example::

    service = InferenceService(registry, runner)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = "default", "classify_x_to_y"
    request.input.example_list.examples.add().features.feature["x"].float_list.value.append(2)
    service.classify(request).result.classifications[0].classes[0].score   # 3.0

The REST helpers (``classification_request_from_json``, ``regression_request_from_json``,
``classify_response_to_json``, ``regress_response_to_json``) convert TF Serving's JSON
bodies ``{"signature_name": s, "context": {...}, "examples": [{...}, ...]}`` to requests and
responses to ``{"results": [[[label, score], ...], ...]}`` / ``{"results": [value, ...]}``
(dicts whose floats print as TF Serving prints a float32: its shortest round-trip form).
"""
from __future__ import annotations

import base64
import binascii
import json
from typing import Dict, List, Optional, Tuple, Union

import grpc
import numpy as np
from tensorflow.core.example import feature_pb2
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    model_pb2,
    regression_pb2,
)

from recsys_tf.wire import codec
from recsys_tf.wire.contract import (
    CLASS_SCORES_OUTPUT,
    CLASSES_OUTPUT,
    CLASSIFY_METHOD,
    DEFAULT_SIGNATURE,
    EXAMPLES_INPUT,
    REGRESS_METHOD,
    REGRESSION_OUTPUT,
)
from recsys_tf.wire.errors import ServingError, invalid

__all__ = ["InferenceService", "serialized_examples", "classification_request_from_json",
           "regression_request_from_json", "classify_response_to_json",
           "regress_response_to_json"]


# --------------------------------------------------------------------------- helpers
def _dtype_name(array: np.ndarray) -> str:
    try:
        return types_pb2.DataType.Name(codec.dtype_enum(array.dtype))
    except (TypeError, ValueError):
        return str(array.dtype)


def _is_string(array: np.ndarray) -> bool:
    return array.dtype.kind in "OSU"


def serialized_examples(model_input) -> np.ndarray:
    """The request's examples as a [n] string array (TF Serving's
    InputToSerializedExampleTensor): a context is prepended to every example's bytes."""
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        rows = [e.SerializeToString() for e in model_input.example_list.examples]
    elif kind == "example_list_with_context":
        with_context = model_input.example_list_with_context
        context = with_context.context.SerializeToString()
        rows = [context + e.SerializeToString() for e in with_context.examples]
    else:
        rows = []
    if not rows:
        raise invalid("Input is empty.")
    out = np.empty(len(rows), dtype=object)
    out[:] = rows
    return out


def _model_spec(out, name: str, signature_name: str, version: int) -> None:
    """TF Serving's MakeModelSpec: the signature named "" is ``serving_default``."""
    out.Clear()
    out.name = name
    out.signature_name = signature_name or DEFAULT_SIGNATURE
    out.version.value = version


def _find_signature(version, name: str, missing: str):
    name = name or DEFAULT_SIGNATURE
    sig = version.signature_defs.get(name)
    if sig is None:
        raise invalid(f"{missing}{name}")
    return name, sig


# --------------------------------------------------------------------------- classification
def _examples_input(sig, check_method: bool, method: str, what: str) -> None:
    """The checks Classify and Regress share: the method name (when checked), one input."""
    if check_method and sig.method_name != method:
        raise invalid(f"Expected {what} signature method_name to be {method}. "
                      f"Was: {sig.method_name}")
    if len(sig.inputs) != 1:
        raise invalid("Expected one input Tensor.")


def _input_key(sig, what: str) -> str:
    if EXAMPLES_INPUT not in sig.inputs:
        raise invalid(f"No {what} inputs found in SignatureDef: {sig}")
    return EXAMPLES_INPUT


def _classification_keys(sig, check_method: bool) -> Tuple[str, List[str]]:
    """(input key, output keys) of a classification signature (PreProcessClassification)."""
    _examples_input(sig, check_method, CLASSIFY_METHOD, "classification")
    if len(sig.outputs) not in (1, 2):
        raise invalid(f"Expected one or two output Tensors, found {len(sig.outputs)}")
    input_key = _input_key(sig, "classification")
    keys = [k for k in (CLASSES_OUTPUT, CLASS_SCORES_OUTPUT) if k in sig.outputs]
    if not keys:
        raise invalid(f"Expected classification signature outputs to contain at least one of "
                      f"\"{CLASSES_OUTPUT}\" or \"{CLASS_SCORES_OUTPUT}\". Signature was: {sig}")
    return input_key, keys


def _check_classification_output(array: np.ndarray, what: str, is_type, type_name: str,
                                  num_examples: int) -> None:
    if array.ndim != 2:
        raise invalid(f"Expected Tensor shape: [batch_size num_classes] but got {codec.shape_text(array.shape)}")
    if not is_type(array):
        raise invalid(f"Expected {what} Tensor of {type_name}. Got: {_dtype_name(array)}")
    if array.shape[0] != num_examples:
        raise invalid(f"Expected {what} output batch size of {num_examples}. "
                      f"Got: {array.shape[0]}")


def _label(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _classification_result(num_examples: int, outputs: Dict[str, np.ndarray], result) -> None:
    """Fill a ClassificationResult (PostProcessClassificationResult)."""
    classes = outputs.get(CLASSES_OUTPUT)
    scores = outputs.get(CLASS_SCORES_OUTPUT)
    if classes is not None:
        classes = np.asarray(classes)
        _check_classification_output(classes, "classes", _is_string, "DT_STRING", num_examples)
    if scores is not None:
        scores = np.asarray(scores)
        _check_classification_output(scores, "scores", lambda a: a.dtype == np.float32,
                                     "DT_FLOAT", num_examples)
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid(f"Tensors class and score should match in dim_size(1). Got "
                      f"{classes.shape[1]} vs. {scores.shape[1]}")
    present = classes if classes is not None else scores
    num_classes = present.shape[1] if present is not None else 0
    for i in range(num_examples):
        classifications = result.classifications.add()
        for c in range(num_classes):
            cl = classifications.classes.add()
            if classes is not None:
                cl.label = _label(classes[i, c])
            if scores is not None:
                cl.score = float(scores[i, c])


# --------------------------------------------------------------------------- regression
def _regression_keys(sig, check_method: bool) -> Tuple[str, List[str]]:
    """(input key, output keys) of a regression signature (PreProcessRegression)."""
    _examples_input(sig, check_method, REGRESS_METHOD, "regression")
    if len(sig.outputs) != 1:
        raise invalid("Expected one output Tensor.")
    input_key = _input_key(sig, "regression")
    if REGRESSION_OUTPUT not in sig.outputs:
        raise invalid(f"No regression outputs found in SignatureDef: {sig}")
    return input_key, [REGRESSION_OUTPUT]


def _regression_result(num_examples: int, outputs: Dict[str, np.ndarray], result) -> None:
    """Fill a RegressionResult (PostProcessRegressionResult)."""
    if REGRESSION_OUTPUT not in outputs:
        raise invalid(f"Could not find output tensor '{REGRESSION_OUTPUT}'")
    array = np.asarray(outputs[REGRESSION_OUTPUT])
    if not (array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 1)):
        raise invalid("Expected output Tensor shape to be either [batch_size] or "
                      f"[batch_size, 1] but got {codec.shape_text(array.shape)}")
    if array.shape[0] != num_examples:
        raise invalid(f"Input batch size did not match output batch size: {num_examples} vs. "
                      f"{array.shape[0]}")
    if array.dtype != np.float32:
        raise invalid(f"Expected output Tensor of DT_FLOAT.  Got: {_dtype_name(array)}")
    if array.size != num_examples:
        raise invalid(f"Expected output batch size to be {num_examples}.  Got: {array.size}")
    for value in array.reshape(-1):
        result.regressions.add().value = float(value)


_KINDS = {
    CLASSIFY_METHOD: (_classification_keys, _classification_result, "classification_result"),
    REGRESS_METHOD: (_regression_keys, _regression_result, "regression_result"),
}


# --------------------------------------------------------------------------- the service
class InferenceService:
    """Classify, Regress and MultiInference over a registry and a runner (see the module)."""

    def __init__(self, registry, runner, method_name_check: bool = False):
        self.registry = registry
        self.runner = runner
        self.method_name_check = bool(method_name_check)

    def _run(self, version, signature_name: str, input_key: str, examples: np.ndarray,
             output_keys: List[str]) -> Dict[str, np.ndarray]:
        outputs = self.runner.run(version, signature_name, {input_key: examples},
                                  output_keys=list(output_keys))
        return {key: outputs[key] for key in output_keys if key in outputs}

    def _single(self, request, method: str, response):
        if not request.HasField("model_spec"):
            raise invalid("Missing ModelSpec")
        keys_of, fill, _ = _KINDS[method]
        version = self.registry.resolve(request.model_spec)
        name, sig = _find_signature(version, request.model_spec.signature_name,
                                    "No signature was found with the name: ")
        input_key, output_keys = keys_of(sig, self.method_name_check)
        _model_spec(response.model_spec, request.model_spec.name,
                    request.model_spec.signature_name, version.version)
        examples = serialized_examples(request.input)
        outputs = self._run(version, name, input_key, examples, output_keys)
        fill(len(examples), outputs, response.result)
        return response

    def classify(self, request) -> classification_pb2.ClassificationResponse:
        """Answer a ``ClassificationRequest``; raises ``ServingError``."""
        return self._single(request, CLASSIFY_METHOD,
                            classification_pb2.ClassificationResponse())

    def regress(self, request) -> regression_pb2.RegressionResponse:
        """Answer a ``RegressionRequest``; raises ``ServingError``."""
        return self._single(request, REGRESS_METHOD, regression_pb2.RegressionResponse())

    def multi_inference(self, request) -> inference_pb2.MultiInferenceResponse:
        """Answer a ``MultiInferenceRequest``: every task on the same examples; raises
        ``ServingError``. The version is the one the first task's ``model_spec`` asks for."""
        tasks = request.tasks
        spec = tasks[0].model_spec if tasks and tasks[0].HasField("model_spec") \
            else model_pb2.ModelSpec()
        version = self.registry.resolve(spec)
        model_name, seen, plans = "", set(), []
        for task in tasks:
            if not task.model_spec.name:
                raise invalid("Found ModelSpec with an empty model name.")
            if not model_name:
                model_name = task.model_spec.name
            elif model_name != task.model_spec.name:
                raise invalid("All ModelSpecs in a MultiInferenceRequest must access the same "
                              "model name.")
            name = task.model_spec.signature_name or DEFAULT_SIGNATURE
            if name in seen:
                raise invalid(f"Duplicate evaluation of signature: {name}")
            seen.add(name)
            name, sig = _find_signature(version, name,
                                        "Requested signature not found in model graph: ")
            if task.method_name not in _KINDS:
                raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                   f"Unsupported signature method_name: {task.method_name}")
            input_key, output_keys = _KINDS[task.method_name][0](sig, self.method_name_check)
            plans.append((task, name, input_key, output_keys))
        examples = serialized_examples(request.input)
        # TF Serving runs every task's outputs in one Session.Run; here each signature runs
        # on the same examples, which answers the same for signatures without side effects.
        outputs = [self._run(version, name, input_key, examples, output_keys)
                   for _, name, input_key, output_keys in plans]
        response = inference_pb2.MultiInferenceResponse()
        for (task, _, _, _), out in zip(plans, outputs):
            _, fill, field = _KINDS[task.method_name]
            result = response.results.add()
            fill(len(examples), out, getattr(result, field))
            _model_spec(result.model_spec, task.model_spec.name,
                        task.model_spec.signature_name, version.version)
        return response


# --------------------------------------------------------------------------- REST: JSON in
_DEBUG_LIMIT = 256  # TF Serving's kMaxJsonDebugStringBytes


def _json_number(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    text = repr(float(value))
    if "e" in text:
        mantissa, exp = text.split("e")
        text = f"{mantissa}e{int(exp)}"
    return text


def _events(value, depth: int, out: List[str], prefix: str) -> None:
    """The pieces rapidjson's PrettyWriter (single-line arrays, 4-space indent) writes, one
    per writer call, so that a cut after any piece is the cut TF Serving makes."""
    if isinstance(value, dict):
        out.append(prefix + "{")
        for i, (key, item) in enumerate(value.items()):
            sep = ",\n" if i else "\n"
            out.append(sep + " " * 4 * (depth + 1) + json.dumps(key, ensure_ascii=False))
            _events(item, depth + 1, out, ": ")
        out.append(("\n" + " " * 4 * depth if value else "") + "}")
    elif isinstance(value, list):
        out.append(prefix + "[")
        for i, item in enumerate(value):
            _events(item, depth + 1, out, ", " if i else "")
        out.append("]")
    elif value is True or value is False:
        out.append(prefix + ("true" if value else "false"))
    elif value is None:
        out.append(prefix + "null")
    elif isinstance(value, float):
        out.append(prefix + _json_number(value))
    elif isinstance(value, int):
        out.append(prefix + str(value))
    else:
        out.append(prefix + json.dumps(value, ensure_ascii=False))


def _debug_string(value) -> str:
    """TF Serving's JsonValueToDebugString: pretty JSON, cut once 256 bytes are written."""
    pieces: List[str] = []
    _events(value, 0, pieces, "")
    text = b""
    for piece in pieces:
        if len(text) >= _DEBUG_LIMIT:
            break
        text += piece.encode("utf-8")
    return text.decode("utf-8", errors="replace")


def _format_error(doc, message: str) -> ServingError:
    return invalid(f"JSON Value: {_debug_string(doc)} {message}")


_KIND_NAMES = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64", None: "UNKNOWN"}


def json_type_name(value) -> str:
    """rapidjson's name of a JSON value's type (JsonTypeString)."""
    if isinstance(value, bool):
        return str(value)                                   # "True" / "False"
    names = {dict: "Object", list: "Array", str: "String", type(None): "Null"}
    return names.get(type(value), "Number")


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid("Unable to base64 decode") from None


def _add_value(value, name: str, feature) -> None:
    """One JSON value appended to a Feature (TF Serving's AddValueToFeature)."""
    kind = feature.WhichOneof("kind")

    def want(wanted: str) -> None:
        if kind not in (None, wanted):
            raise invalid(f"Unexpected element type in feature: {name} expecting type: "
                          f"{_KIND_NAMES[kind]}")

    if value is True or value is False:
        want("int64_list")
        feature.int64_list.value.append(1 if value else 0)
    elif isinstance(value, str):
        want("bytes_list")
        feature.bytes_list.value.append(value.encode("utf-8"))
    elif isinstance(value, dict) and list(value) == ["b64"] and isinstance(value["b64"], str):
        want("bytes_list")
        feature.bytes_list.value.append(_b64decode(value["b64"]))
    elif isinstance(value, int) and -2**63 <= value < 2**64:
        want("int64_list")
        if value >= 2**63:
            raise invalid(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        feature.int64_list.value.append(value)
    elif isinstance(value, (int, float)):  # a double, or an integer past 64 bits (rapidjson)
        want("float_list")
        feature.float_list.value.append(float(value))
    else:  # null, a nested list, an object that is not {"b64": ...}
        raise invalid(f"Feature: {name} has element with unexpected JSON type: "
                      f"{json_type_name(value)}")


def _example_from_json(value, example) -> None:
    """A JSON object as a tf.Example (TF Serving's MakeExampleFromJsonObject)."""
    if not isinstance(value, dict):
        raise invalid(f"Example must be JSON object but got JSON {json_type_name(value)}")
    for name, content in value.items():
        feature = feature_pb2.Feature()
        for item in (content if isinstance(content, list) else [content]):
            _add_value(item, name, feature)
        example.features.feature[name].CopyFrom(feature)


def _parse_problem(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"Invalid encoding in string. at offset: {exc.start}"
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at offset: {exc.pos}"
    return "the document is nested too deeply"


def _parse_json(body: Union[str, bytes, dict]):
    """TF Serving's ParseJson: the body must be one JSON object."""
    if isinstance(body, dict):
        return body
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise invalid(f"JSON Parse error: {_parse_problem(exc)}") from None
    if not isinstance(doc, dict):
        raise _format_error(doc, "Is not object")
    return doc


def _fill_model_spec(spec, model: str, version: Optional[Union[int, str]],
                     label: Optional[str]) -> None:
    """FillModelSpecWithNameVersionAndLabel: the model, version and label of the URL."""
    if None not in (version, label):
        raise invalid(f"Both model version ({version}) and model version label ({label}) "
                      "cannot be supplied.")
    spec.name = model
    if label is not None:
        spec.version_label = label
    elif version is not None:
        spec.version.value = int(version)


def _request_from_json(request, body, model, version, label):
    _fill_model_spec(request.model_spec, model, version, label)
    doc = _parse_json(body)
    if "signature_name" in doc:
        if not isinstance(doc["signature_name"], str):
            raise _format_error(doc, "not formatted correctly. 'signature_name' key must be a "
                                     "string value.")
        request.model_spec.signature_name = doc["signature_name"]
    target = request.input.example_list
    if "context" in doc:
        target = request.input.example_list_with_context
        _example_from_json(doc["context"], target.context)
    if "examples" not in doc:
        # TF Serving says "classify" for both methods.
        raise _format_error(doc, "When method is classify, key 'examples' is expected and was "
                                 "not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise _format_error(doc, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise _format_error(doc, "'examples' value is an empty array")
    for value in examples:
        _example_from_json(value, target.examples.add())
    return request


def classification_request_from_json(body, model: str, version=None,
                                     label: Optional[str] = None):
    """A ``ClassificationRequest`` from a REST ``:classify`` body (str, bytes or parsed
    dict) and the URL's model name, version and label; raises ``ServingError``."""
    return _request_from_json(classification_pb2.ClassificationRequest(), body, model,
                              version, label)


def regression_request_from_json(body, model: str, version=None, label: Optional[str] = None):
    """A ``RegressionRequest`` from a REST ``:regress`` body; see
    :func:`classification_request_from_json`."""
    return _request_from_json(regression_pb2.RegressionRequest(), body, model, version, label)


# --------------------------------------------------------------------------- REST: JSON out
def _float32(value: float) -> float:
    """A float32 as the Python float whose repr is its shortest round-trip form (what TF
    Serving's WriteDecimal prints): 0.1f prints as 0.1, not 0.10000000149011612."""
    as32 = np.float32(value)
    return float(str(as32)) if np.isfinite(as32) else float(as32)


def classify_response_to_json(response) -> dict:
    """``{"results": [[[label, score], ...] per example]}`` of a ``ClassificationResponse``
    (or its ``ClassificationResult``); raises ``ServingError`` when it holds no examples."""
    result = response.result if hasattr(response, "result") else response
    if not result.classifications:
        raise invalid("Cannot convert empty ClassificationResults to JSON")
    return {"results": [[[c.label, _float32(c.score)] for c in classifications.classes]
                        for classifications in result.classifications]}


def regress_response_to_json(response) -> dict:
    """``{"results": [value, ...]}`` of a ``RegressionResponse`` (or its ``RegressionResult``);
    raises ``ServingError`` when it holds no examples."""
    result = response.result if hasattr(response, "result") else response
    if not result.regressions:
        raise invalid("Cannot convert empty RegressionResults to JSON")
    return {"results": [_float32(r.value) for r in result.regressions]}
