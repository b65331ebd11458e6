"""One way the server tests write a ``PredictRequest`` (imported by the test modules here)."""
from tensorflow_serving.apis import predict_pb2


def predict_request(model, inputs, to_proto, signature=None, version=None, label=None,
                    output_filter=()):
    """A ``PredictRequest`` for ``model``: each input a ``TensorProto`` as given, or made from
    its value by ``to_proto``; a version number or label when given."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if signature:
        request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for key, value in inputs.items():
        is_proto = hasattr(value, "SerializeToString")
        request.inputs[key].CopyFrom(value if is_proto else to_proto(value))
    request.output_filter.extend(output_filter)
    return request
