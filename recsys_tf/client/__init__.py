"""The client: retrieve -> rank -> re-rank over TF Serving's gRPC API.

It imports nothing of :mod:`recsys_tf.server` and no model code; it works the same against
TF Serving and against the bundled server. ``from recsys_tf.client import Recommender``.
The parts: ``recommender`` (the pipeline, composed of the others), ``options``
(``ClientOptions``: how it calls the models), ``calls`` (``ModelCaller``: deadlines, retries,
the signature cache), ``requests`` (``RequestBuilder``: inputs checked against a signature),
``errors`` (``RequestError``, ``DeadlineExceeded``), ``stores`` (item and user tables),
``rules`` (business rules, the re-rank stage), ``grpc_client`` (one model's Predict and
metadata) and ``rerank`` (pure numpy: importing it alone loads no TensorFlow).
"""
import importlib

_PUBLIC = {
    "Recommender": "recommender", "ClientOptions": "options", "Result": "rules",
    "Recommendation": "rules", "Rules": "rules", "Boost": "rules", "ItemStore": "stores",
    "InMemoryItemStore": "stores", "UserStore": "stores", "RequestError": "errors",
    "DeadlineExceeded": "errors", "ServingClient": "grpc_client", "ModelCaller": "calls",
    "RequestBuilder": "requests",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):  # the public names load their module on first use (rerank stays light)
    if name in _PUBLIC:
        return getattr(importlib.import_module(f"recsys_tf.client.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module 'recsys_tf.client' has no attribute {name!r}")
