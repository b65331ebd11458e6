"""The TF Serving-compatible model server (``recsys-tf serve``).

It imports nothing of :mod:`recsys_tf.client` and no model code: what it shares with the
client is in :mod:`recsys_tf.wire`. ``from recsys_tf.server import ModelServer``.
"""
import importlib

__all__ = ["ModelServer"]


def __getattr__(name):
    if name == "ModelServer":
        return importlib.import_module("recsys_tf.server.server").ModelServer
    raise AttributeError(f"module 'recsys_tf.server' has no attribute {name!r}")
