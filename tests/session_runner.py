"""Test doubles of the server's registry and runner for ``InferenceService``: a SavedModel
loaded into a ``tf.compat.v1.Session`` (as TF Serving's SavedModelBundle does) and run by
feeding and fetching the SignatureDef's tensor names, and a registry holding one version.

    version = load_version("/path/to/model/1", "default", 1)
    service = InferenceService(OneVersionRegistry(version), SessionRunner())
"""
from types import SimpleNamespace

import tensorflow as tf

from recsys_tf.wire.errors import CODE_BY_VALUE, ServingError, invalid, not_found


def session_version(session, signature_defs, model="default", version=1):
    """A version object (``.model``, ``.version``, ``.signature_defs``) over a live session."""
    return SimpleNamespace(model=model, version=version, signature_defs=dict(signature_defs),
                           session=session)


def load_version(export_dir, model="default", version=1):
    """Load a SavedModel's "serve" MetaGraph into a new graph and session."""
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    with graph.as_default():
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
    return session_version(session, meta_graph.signature_def, model, version)


class SessionRunner:
    """``run(version, signature, inputs, output_keys)`` by tensor names in one Session.run."""

    def __init__(self):
        self.calls = []

    def run(self, version, signature_name, inputs, output_keys=None):
        sig = version.signature_defs[signature_name]
        keys = list(output_keys) if output_keys is not None else list(sig.outputs)
        feeds = {sig.inputs[key].name: value for key, value in inputs.items()}
        self.calls.append((signature_name, sorted(inputs), keys))
        try:
            values = version.session.run([sig.outputs[key].name for key in keys], feeds)
        except tf.errors.OpError as exc:
            raise ServingError(CODE_BY_VALUE[exc.error_code], exc.message) from None
        except (TypeError, ValueError) as exc:  # a feed Python refuses before running
            raise invalid(str(exc)) from None
        return dict(zip(keys, values))


class OneVersionRegistry:
    """``resolve(model_spec)``: the one version, NOT_FOUND for any other name or number."""

    def __init__(self, version):
        self.version = version

    def resolve(self, spec):
        v = self.version
        if spec.name != v.model or (spec.WhichOneof("version_choice") == "version"
                                    and spec.version.value != v.version):
            want = (f"Specific({spec.name}, {spec.version.value})"
                    if spec.WhichOneof("version_choice") == "version" else f"Latest({spec.name})")
            raise not_found(f"Servable not found for request: {want}")
        return v
