"""TargetAttention: weigh a user's behaviours by their relevance to the candidate item.

For keys ``h_j`` (one per behaviour, ``j = 1..L``) and the target (query) ``t``::

    s_j = w^T MLP([h_j, t, h_j - t, h_j * t]) + b          # score="mlp": DIN's local activation unit
    s_j = h_j^T W t                                         # score="bilinear": DIEN eq. 4
    a_j = softmax_j(s_j) over real positions                # normalization="softmax"
        | sigmoid(s_j)                                      # normalization="sigmoid"
        | s_j                                               # normalization="none" (DIN's choice)
    pooled = sum_j m_j a_j h_j

where ``m_j`` is 1 for real behaviours and 0 for padding; padded positions get weight 0, and a
row with no real behaviour gets all-zero weights and a zero vector. When the query size
differs from the key size, the MLP scorer first maps ``t`` linearly to the key size.

Args:
  units: hidden sizes of the scoring MLP (default ``(80, 40)``).
  activation: activation of the scoring MLP (default ``"sigmoid"``).
  normalization: ``"softmax"`` (default), ``"sigmoid"`` or ``"none"``.
  score: ``"mlp"`` (default) or ``"bilinear"``.

Call: ``layer([keys, query], mask=mask)`` with keys ``[b, L, d_k]``, query ``[b, d_q]`` and
mask ``[b, L]`` (bool, or None for all real) returns ``(pooled [b, d_k], weights [b, L])``.

Example::

    att = TargetAttention((36,), normalization="softmax")
    pooled, weights = att([history_emb, item_emb], mask=history_mask)

References: Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018;
Zhou et al., "Deep Interest Evolution Network for Click-Through Rate Prediction", AAAI 2019.
"""
from recsys_tf.backend import keras, tf
from recsys_tf.layers.augru import time_dense
from recsys_tf.layers.mlp import MLP

NORMALIZATIONS = ("softmax", "sigmoid", "none")
SCORES = ("mlp", "bilinear")


class TargetAttention(keras.layers.Layer):
    def __init__(self, units=(80, 40), activation="sigmoid", normalization="softmax",
                 score="mlp", **kwargs):
        super().__init__(**kwargs)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization={normalization!r}, expected one of {NORMALIZATIONS}")
        if score not in SCORES:
            raise ValueError(f"score={score!r}, expected one of {SCORES}")
        self.units = [int(u) for u in units]
        self.activation = activation
        self.normalization = normalization
        self.score = score

    def build(self, input_shape):
        keys_shape, query_shape = input_shape[0], input_shape[1]
        d_k, d_q = int(keys_shape[-1]), int(query_shape[-1])
        if self.score == "bilinear":
            self.bilinear = self.add_weight(name="bilinear", shape=(d_k, d_q),
                                            initializer="glorot_uniform")
        else:
            self.query_projection = (keras.layers.Dense(d_k, use_bias=False, name="query_projection")
                                     if d_q != d_k else None)
            self.mlp = MLP(self.units, activation=self.activation, name="mlp")
            self.out = keras.layers.Dense(1, name="score")
            if self.units:  # built now: scores() applies the first layer itself
                self.mlp.build((None, 4 * d_k))
                self.mlp.dense[0].build((None, 4 * d_k))
        super().build(input_shape)

    def scores(self, keys, query):
        """Unnormalised scores ``s_j`` ``[b, L]``."""
        if self.score == "bilinear":
            return tf.einsum("bld,de,be->bl", keys, self.bilinear, query)
        if self.query_projection is not None:
            query = self.query_projection(query)
        if not self.units:
            t = tf.broadcast_to(query[:, None, :], tf.shape(keys))
            units = tf.concat([keys, t, keys - t, keys * t], axis=-1)
            return tf.squeeze(self.out(units), axis=-1)
        # The first layer on [h, t, h - t, h * t] is h (W_1 + W_3) + t (W_2 - W_3) + (h t) W_4 + b:
        # the query's part is computed once per row instead of once per behaviour, and the
        # [b, L, 4d] concatenation is never built (same weights, same values).
        first = self.mlp.dense[0]
        w1, w2, w3, w4 = tf.split(first.kernel, 4, axis=0)
        x = time_dense(tf.concat([keys, keys * query[:, None, :]], axis=-1),
                       tf.concat([w1 + w3, w4], axis=0))
        x = self.mlp.act(x + (tf.matmul(query, w2 - w3) + first.bias)[:, None, :])
        for dense in self.mlp.dense[1:]:
            x = self.mlp.act(dense(x))
        return tf.squeeze(self.out(x), axis=-1)

    def call(self, inputs, mask=None):
        keys, query = inputs
        s = self.scores(keys, query)
        m = tf.ones_like(s) if mask is None else tf.cast(mask, s.dtype)
        if self.normalization == "softmax":
            s = tf.where(m > 0, s, tf.fill(tf.shape(s), tf.constant(-1e9, s.dtype)))
            weights = tf.nn.softmax(s, axis=-1) * m
        elif self.normalization == "sigmoid":
            weights = tf.sigmoid(s) * m
        else:
            weights = s * m
        pooled = tf.reduce_sum(weights[..., None] * keys, axis=1)
        return pooled, weights

    def get_config(self):
        config = super().get_config()
        config.update({"units": self.units, "activation": self.activation,
                       "normalization": self.normalization, "score": self.score})
        return config
