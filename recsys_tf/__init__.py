"""recsys_tf: recommender model zoo and serving bundle for TensorFlow.

Importing the package is cheap: it only makes sure TensorFlow will use Keras 2 (tf-keras),
which TensorFlow Recommenders requires. Everything heavy is imported on first use.
"""
import os as _os

# Must happen before TensorFlow is first imported anywhere in the process.
_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

_LAZY = {
    "FeatureSet": "recsys_tf.features",
    "Categorical": "recsys_tf.features",
    "Numeric": "recsys_tf.features",
    "Sequence": "recsys_tf.features",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'recsys_tf' has no attribute {name!r}")


__all__ = sorted(_LAZY) + ["__version__"]
