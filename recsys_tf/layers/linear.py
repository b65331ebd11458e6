"""Linear: the first-order (logistic regression) term over raw features.

``y = b + sum_f w_f(x_f)`` where ``w_f(x)`` is a learned scalar per categorical value (a
1-d embedding looked up inside the model), ``w_f * z_f`` for a normalised numeric feature, and
the masked mean of the 1-d weights of a sequence's ids.

Args:
  feature_set: the FeatureSet (or its ``to_dict()``).
  features: names of the features in the linear term.
  l2: L2 penalty on the looked-up weights (default 0).
  fused: one weight vector for all categorical features (see ``FeatureEmbedding(fused=...)``;
    default False).

Inputs: a dict of raw feature tensors. Outputs: ``[batch, 1]`` logits.

Example::

    Linear(fs, ["user_id", "item_id", "price"])(batch)   # -> [batch, 1]
"""
from recsys_tf.backend import keras, tf
from recsys_tf.layers.embedding import FeatureEmbedding


class Linear(keras.layers.Layer):
    def __init__(self, feature_set, features, l2=0.0, fused=False, **kwargs):
        super().__init__(**kwargs)
        self.fused = bool(fused)
        self.weights_1d = FeatureEmbedding(feature_set, features, dim=1, numeric="field",
                                           sequence="mean", embeddings_l2=l2,
                                           initializer_stddev=1e-4, fused=self.fused,
                                           name="weights_1d")
        self.feature_set = self.weights_1d.feature_set
        self.features = list(features)
        self.l2 = float(l2)

    def build(self, input_shape=None):
        self.bias = self.add_weight(name="bias", shape=(1,), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        if self.fused:
            return tf.reduce_sum(self.weights_1d.fields(inputs), axis=[1, 2])[:, None] + self.bias
        w = self.weights_1d(inputs)
        return tf.add_n([w[n] for n in self.features]) + self.bias

    def get_config(self):
        config = super().get_config()
        config.update({"feature_set": self.feature_set.to_dict(), "features": self.features,
                       "l2": self.l2, "fused": self.fused})
        return config
