"""The one place model code gets TensorFlow and Keras from.

recsys_tf runs on Keras 2 (the ``tf_keras`` package) because TensorFlow Recommenders 0.7.7
needs it. Every layer and model does ``from recsys_tf.backend import tf, keras``, so a later
move to Keras 3 is a change to this file only.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["tf", "keras"]
