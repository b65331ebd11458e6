"""FM: the factorization machine's second-order interaction term.

Given field embeddings ``v_1..v_F`` (each of size ``k``), the pairwise term
``sum_{i<j} <v_i, v_j>`` is computed in ``O(F k)`` as

    0.5 * sum_k [ (sum_i v_ik)^2 - sum_i v_ik^2 ]

Args:
  reduce_sum: if True (default) return the scalar term ``[batch, 1]``; if False return the
    per-dimension vector ``[batch, k]`` (the "bi-interaction" pooling of NFM).

Inputs: ``[batch, fields, k]``. Outputs: ``[batch, 1]`` or ``[batch, k]``.

Example::

    FM()(tf.ones([2, 3, 4]))   # 3 pairs x <1,1>=4 -> [[12.], [12.]]

Reference: Rendle, "Factorization Machines", ICDM 2010; used as the FM component of
Guo et al., "DeepFM", IJCAI 2017.
"""
from recsys_tf.backend import keras, tf


class FM(keras.layers.Layer):
    def __init__(self, reduce_sum=True, **kwargs):
        super().__init__(**kwargs)
        self.reduce_sum = bool(reduce_sum)

    def call(self, v):
        square_of_sum = tf.square(tf.reduce_sum(v, axis=1))
        sum_of_square = tf.reduce_sum(tf.square(v), axis=1)
        out = 0.5 * (square_of_sum - sum_of_square)
        return tf.reduce_sum(out, axis=1, keepdims=True) if self.reduce_sum else out

    def get_config(self):
        config = super().get_config()
        config.update({"reduce_sum": self.reduce_sum})
        return config
