"""FeatureEmbedding: raw feature values in, embeddings out, with every lookup inside.

For each selected feature ``f`` of a :class:`~recsys_tf.features.FeatureSet`:

* Categorical: ``e_f = E_t[lookup_t(x_f)]`` where ``t`` is the feature's table, ``lookup_t`` a
  vocabulary lookup (unknown values -> OOV rows) or a hash into ``hash_buckets`` rows, and
  ``E_t`` the table's ``[num_buckets, dim]`` embedding matrix. Features sharing a table share
  ``lookup_t`` and ``E_t``.
* Sequence of ids: ``e_f[j] = E_t[lookup_t(x_f[j])]`` for each position, with the mask
  ``m_f[j] = x_f[j] != pad``; pooled to ``sum_j m_j e_f[j] / max(1, sum_j m_j)`` when
  ``sequence="mean"``.
* Numeric: ``z_f = (g(x_f) - mean) / std`` (NaN -> 0); returned as ``[batch, 1]`` when
  ``numeric="value"``, or as a field embedding ``z_f * v_f`` with a learned ``v_f`` of size
  ``dim`` when ``numeric="field"`` (what FM-style models use).

Args:
  feature_set: the FeatureSet (or its ``to_dict()``).
  features: names of the features to embed.
  dim: if set, every table gets this embedding size instead of the declared ``dim`` (FM, CIN
    and cross layers need one common size; ``dim=1`` gives first-order weights). Default None.
  numeric: ``"value"`` (default) or ``"field"``.
  sequence: ``"sequence"`` (default; ``[batch, max_len, dim]``) or ``"mean"`` (``[batch, dim]``).
  embeddings_l2: L2 penalty on the looked-up rows, averaged over the batch (default 0).
  initializer_stddev: stddev of the normal initialiser of embeddings (default 0.05).

Inputs: a dict ``{name: tensor}`` with raw values (``[batch]`` or ``[batch, max_len]``); extra
keys are ignored. Outputs: a dict ``{name: embedding}`` in ``features`` order.

Example::

    emb = FeatureEmbedding(fs, ["user_id", "item_id", "price"], dim=8, numeric="field")
    fields = emb.stack(emb(batch))       # [batch, 3, 8]
"""
from __future__ import annotations

from recsys_tf.backend import keras, tf
from recsys_tf.features import Categorical, FeatureSet, Numeric, Sequence


def normalise(f: Numeric, x):
    """``(g(x) - mean) / std`` for a Numeric feature, ``g = log1p(max(x, 0))`` if ``f.log``;
    NaN -> 0. Shape is kept."""
    x = tf.cast(x, tf.float32)
    if f.log:
        x = tf.math.log1p(tf.maximum(x, 0.0))
    z = (x - f.mean) / f.std
    return tf.where(tf.math.is_nan(z), tf.zeros_like(z), z)


def masked_mean(x, mask):
    """Mean of ``x [b, L, d]`` over positions where ``mask [b, L]`` is true (0 if none)."""
    m = tf.cast(mask, x.dtype)[..., None]
    return tf.reduce_sum(x * m, axis=1) / tf.maximum(tf.reduce_sum(m, axis=1), 1.0)


class FeatureEmbedding(keras.layers.Layer):
    def __init__(self, feature_set, features, dim=None, numeric="value", sequence="sequence",
                 embeddings_l2=0.0, initializer_stddev=0.05, **kwargs):
        super().__init__(**kwargs)
        fs = feature_set if isinstance(feature_set, FeatureSet) else FeatureSet.from_dict(feature_set)
        if numeric not in ("value", "field"):
            raise ValueError(f"numeric={numeric!r}, expected 'value' or 'field'")
        if numeric == "field" and dim is None:
            raise ValueError("numeric='field' needs a common embedding size: pass dim")
        if sequence not in ("sequence", "mean"):
            raise ValueError(f"sequence={sequence!r}, expected 'sequence' or 'mean'")
        self.feature_set = fs.select(list(features))
        self.features = list(features)
        for n in self.features:
            self.feature_set[n]  # raises a KeyError naming the feature if unknown
        self.dim = dim
        self.numeric = numeric
        self.sequence = sequence
        self.embeddings_l2 = float(embeddings_l2)
        self.initializer_stddev = float(initializer_stddev)
        tables = {}  # table name -> owning Categorical (built first: Keras tracks dicts)
        for n in self.features:
            if not isinstance(self.feature_set[n], Numeric):
                base = self.feature_set.categorical_of(n)
                tables.setdefault(base.table, base)
        self._tables = tables
        self._lookups = {t: self._make_lookup(c) for t, c in self._tables.items()}

    @staticmethod
    def _make_lookup(c: Categorical):
        if c.hash_buckets is not None:
            return keras.layers.Hashing(num_bins=c.hash_buckets, name=f"hash_{c.table}")
        cls = keras.layers.StringLookup if c.dtype == "string" else keras.layers.IntegerLookup
        return cls(vocabulary=list(c.vocabulary), num_oov_indices=c.num_oov, mask_token=None,
                   name=f"lookup_{c.table}")

    def table_dim(self, table: str) -> int:
        return int(self.dim or self._tables[table].dim)

    def build(self, input_shape=None):
        def init():
            return keras.initializers.RandomNormal(stddev=self.initializer_stddev)

        self.tables = {
            t: self.add_weight(name=f"embedding_{t}", shape=(c.num_buckets, self.table_dim(t)),
                               initializer=init(), trainable=True)
            for t, c in self._tables.items()}
        self.field_vectors = {
            n: self.add_weight(name=f"field_{n}", shape=(self.dim,), initializer=init(),
                               trainable=True)
            for n in self.features
            if self.numeric == "field" and isinstance(self.feature_set[n], Numeric)}
        super().build(input_shape)

    def lookup(self, name, values):
        """Row indices of ``values`` in ``name``'s embedding table."""
        table = self.feature_set.categorical_of(name).table
        return self._lookups[table](values)

    def mask(self, inputs, name):
        """Boolean ``[batch, max_len]`` mask of real (non-padding) positions of a sequence."""
        base = self.feature_set.categorical_of(name)
        return tf.not_equal(inputs[name], base.pad)

    def embed_ids(self, name, values):
        """Embeddings of raw ids ``values`` (any shape) in ``name``'s table."""
        if not self.built:  # a table can be used through embed_ids before the layer is called
            self.build(None)
        table = self.feature_set.categorical_of(name).table
        return tf.gather(self.tables[table], self.lookup(name, values))

    def call(self, inputs):
        out = {}
        penalty = []
        for n in self.features:
            f = self.feature_set[n]
            if isinstance(f, Numeric):
                z = normalise(f, inputs[n])[:, None]
                out[n] = z * self.field_vectors[n] if self.numeric == "field" else z
                continue
            e = self.embed_ids(n, inputs[n])
            if self.embeddings_l2:
                penalty.append(tf.reduce_sum(tf.square(e)) / tf.cast(tf.shape(e)[0], e.dtype))
            if isinstance(f, Sequence) and self.sequence == "mean":
                e = masked_mean(e, self.mask(inputs, n))
            out[n] = e
        if penalty:
            self.add_loss(self.embeddings_l2 * tf.add_n(penalty))
        return out

    def stack(self, outputs, names=None):
        """``[batch, fields, dim]`` from the outputs (all of one size, sequences pooled)."""
        names = self.features if names is None else names
        return tf.stack([outputs[n] for n in names], axis=1)

    def get_config(self):
        config = super().get_config()
        config.update({
            "feature_set": self.feature_set.to_dict(), "features": self.features, "dim": self.dim,
            "numeric": self.numeric, "sequence": self.sequence,
            "embeddings_l2": self.embeddings_l2, "initializer_stddev": self.initializer_stddev})
        return config
