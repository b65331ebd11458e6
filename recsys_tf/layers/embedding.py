"""FeatureEmbedding: raw feature values in, embeddings out, with every lookup inside.

For each selected feature ``f`` of a :class:`~recsys_tf.features.FeatureSet`:

* Categorical: ``e_f = E_t[lookup_t(x_f)]`` where ``t`` is the feature's table, ``lookup_t`` a
  vocabulary lookup (unknown values -> OOV rows) or a hash into ``hash_buckets`` rows, and
  ``E_t`` the table's ``[num_buckets, dim]`` embedding matrix. Features sharing a table share
  ``lookup_t`` and ``E_t``.
* Sequence of ids: ``e_f[j] = E_t[lookup_t(x_f[j])]`` for each position, with the mask
  ``m_f[j] = x_f[j] != pad``; pooled to ``sum_j m_j e_f[j] / max(1, sum_j m_j)`` when
  ``sequence="mean"``.
* Numeric: ``z_f = (g(x_f) - mean) / std`` with a missing value (NaN) handled as the feature
  declares (:class:`~recsys_tf.features.Numeric` ``missing``: ``"mean"`` -> 0, ``"fill"`` ->
  ``fill_value`` before ``g``); returned as ``[batch, 1]`` when ``numeric="value"``, or as a
  field embedding ``z_f * v_f`` with a learned ``v_f`` of size ``dim`` when
  ``numeric="field"`` (what FM-style models use). A feature declared ``missing="indicator"``
  also gets ``+ m_f * u_f`` where ``m_f`` is 1 if the value is missing, else 0, and ``u_f`` a
  learned scalar (``"value"``) or ``dim``-vector (``"field"``), initialised to 0.

Args:
  feature_set: the FeatureSet (or its ``to_dict()``).
  features: names of the features to embed.
  dim: if set, every table gets this embedding size instead of the declared ``dim`` (FM, CIN
    and cross layers need one common size; ``dim=1`` gives first-order weights). Default None.
  numeric: ``"value"`` (default) or ``"field"``.
  sequence: ``"sequence"`` (default; ``[batch, max_len, dim]``) or ``"mean"`` (``[batch, dim]``).
  embeddings_l2: L2 penalty on the looked-up rows, averaged over the batch (default 0).
  initializer_stddev: stddev of the normal initialiser of embeddings (default 0.05).
  fused: keep the tables of one embedding size in a single variable (table ``t``'s rows at an
    offset), gather all single-valued features of that size at once and normalise all numeric
    features at once (default False). Same model, far fewer ops and optimizer variables per
    training step - what dominates a CTR model's step on CPU. The rankers use it.

Inputs: a dict ``{name: tensor}`` with raw values (``[batch]`` or ``[batch, max_len]``); extra
keys are ignored. Outputs: a dict ``{name: embedding}`` in ``features`` order. :meth:`fields`
returns them stacked ``[batch, fields, dim]`` and :meth:`flat` concatenated ``[batch, width]``
directly (no per-feature tensors in between).

Encoded inputs (what the trainer feeds): :meth:`encode` runs the lookups alone and returns
``{".cat": [batch, k] int32 row indices of the single-valued categorical features (in
features order), ".num": [batch, N] raw numeric values, name + ".id": a sequence's indices
(-1 at padding)}``. The layer accepts that dict in place of raw values, so the string/hash
lookups can run once, before training, while the SavedModel still takes raw values. Every
layer built from the same features gives the same encoding (a vocabulary lookup puts the OOV
buckets first, then the vocabulary in order).

Example::

    emb = FeatureEmbedding(fs, ["user_id", "item_id", "price"], dim=8, numeric="field")
    fields = emb.stack(emb(batch))       # [batch, 3, 8], the same as emb.fields(batch)
"""
from __future__ import annotations

import numpy as np

from recsys_tf.backend import keras, tf
from recsys_tf.features import Categorical, FeatureSet, Numeric, Sequence

# The keys of an encoded dict. They must be valid TensorFlow node names
# (``[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*``): Keras names the placeholders of a model's traced
# ``call`` in every SavedModel it writes after the keys of the dict the model was first called
# with, and keys such as "#cat" made TensorFlow log "`#cat` is not a valid node name" once per
# traced function (and fall back to unnamed placeholders). The "." keeps them apart from
# ordinary feature names; nothing outside this module spells them.
CAT_KEY = ".cat"
NUM_KEY = ".num"
ID_SUFFIX = ".id"


def repeat_rows(x, rows=None):
    """``x`` (first dimension 1 or ``rows``) as ``rows`` rows; ``x`` itself when ``rows`` is
    None. One user's row repeated for each of its candidates."""
    if rows is None:
        return x
    return tf.broadcast_to(x, tf.concat([[rows], tf.shape(x)[1:]], 0))


def rows_of(table, ids):
    """Rows ``ids`` (any shape) of ``table``: ``tf.gather(table, ids)``, through
    ``tf.nn.embedding_lookup`` so that a table sharded across parameter servers (a
    ``ShardedVariable``, on which ``tf.gather`` fails) is looked up shard by shard.

    Under ``MultiWorkerMirroredStrategy`` the lookup is a gather from the table's value, so
    its gradient is dense: the workers' sparse gradients (different numbers of rows) fail
    its collective all-gather ("Shape mismatch in the collective instance"), a dense
    all-reduce does not. Every worker holds the whole table there anyway."""
    if tf.distribute.has_strategy() and isinstance(tf.distribute.get_strategy(),
                                                   tf.distribute.MultiWorkerMirroredStrategy):
        return tf.gather(_dense_gradient(tf.convert_to_tensor(table)), ids)
    return tf.nn.embedding_lookup(table, ids)


@tf.custom_gradient
def _dense_gradient(x):
    """``x`` itself; its gradient made a dense tensor (a gather's is a ``tf.IndexedSlices``)."""
    return tf.identity(x), tf.convert_to_tensor


def padding_inputs(feature_set, names, n=2):
    """A batch of ``n`` padding/zero raw values of the features ``names`` (builds weights)."""
    out = {}
    for name, spec in feature_set.input_signature(names).items():
        shape = [n] + list(spec.shape[1:])
        out[name] = tf.fill(shape, "" if spec.dtype == tf.string else tf.zeros([], spec.dtype))
    return out


def id_key(name: str) -> str:
    """Key of a sequence's (or a derived feature's) precomputed indices in an encoded dict."""
    return name + ID_SUFFIX


def is_encoded(inputs) -> bool:
    """Whether ``inputs`` is an encoded dict (see the module docstring)."""
    return NUM_KEY in inputs


def normalise(f: Numeric, x):
    """``(g(x) - mean) / std`` for a Numeric feature, ``g = log1p(max(x, 0))`` if ``f.log``;
    a missing value (NaN) is first replaced by ``f.fill_value`` when ``f.missing`` is
    ``"fill"`` or ``"indicator"``, and reads 0 with ``"mean"``. Shape is kept."""
    x = tf.cast(x, tf.float32)
    if f.fills:
        x = tf.where(tf.math.is_nan(x), tf.constant(f.fill_value, tf.float32), x)
    if f.log:
        x = tf.math.log1p(tf.maximum(x, 0.0))
    z = (x - f.mean) / f.std
    return tf.where(tf.math.is_nan(z), tf.zeros_like(z), z)


def normalise_many(features, x):
    """:func:`normalise` of ``x [batch, N]`` whose columns are the Numeric ``features``."""
    x = tf.cast(x, tf.float32)
    fills = [f.fills for f in features]
    if any(fills):
        value = tf.constant([f.fill_value for f in features], tf.float32)[None, :]
        filled = tf.where(tf.math.is_nan(x), value, x)
        x = filled if all(fills) else tf.where(tf.constant(fills)[None, :], filled, x)
    logs = [f.log for f in features]
    if any(logs):
        lx = tf.math.log1p(tf.maximum(x, 0.0))
        x = lx if all(logs) else tf.where(tf.constant(logs)[None, :], lx, x)
    z = (x - tf.constant([f.mean for f in features], tf.float32)) / tf.constant(
        [f.std for f in features], tf.float32)
    return tf.where(tf.math.is_nan(z), tf.zeros_like(z), z)


def missing_indicator(features, x):
    """``[batch, K]`` float 0/1: whether each of the ``features`` declared
    ``missing="indicator"`` is missing (NaN) in ``x [batch, N]`` (columns = ``features``);
    None when none is."""
    cols = [j for j, f in enumerate(features) if f.missing == "indicator"]
    if not cols:
        return None
    x = tf.cast(x, tf.float32)
    if len(cols) != len(features):
        x = tf.gather(x, cols, axis=1)
    return tf.cast(tf.math.is_nan(x), tf.float32)


def masked_mean(x, mask):
    """Mean of ``x [b, L, d]`` over positions where ``mask [b, L]`` is true (0 if none)."""
    m = tf.cast(mask, x.dtype)[..., None]
    return tf.reduce_sum(x * m, axis=1) / tf.maximum(tf.reduce_sum(m, axis=1), 1.0)


class FeatureEmbedding(keras.layers.Layer):
    def __init__(self, feature_set, features, dim=None, numeric="value", sequence="sequence",
                 embeddings_l2=0.0, initializer_stddev=0.05, fused=False, **kwargs):
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
        if not self.initializer_stddev > 0:
            raise ValueError(f"initializer_stddev={initializer_stddev!r}, expected a number > 0")
        self.fused = bool(fused)
        tables = {}  # table name -> owning Categorical (built first: Keras tracks dicts)
        for n in self.features:
            if not isinstance(self.feature_set[n], Numeric):
                base = self.feature_set.categorical_of(n)
                tables.setdefault(base.table, base)
        self._tables = tables
        self._lookups = {t: self._make_lookup(c) for t, c in self._tables.items()}
        kinds = {n: type(self.feature_set[n]) for n in self.features}
        # built as plain locals, then assigned as tuples: Keras wraps dicts/lists it is given
        self._numeric = tuple(n for n in self.features if kinds[n] is Numeric)
        self._cat = tuple(n for n in self.features if kinds[n] is Categorical)
        self._seq = tuple(n for n in self.features if kinds[n] is Sequence)
        self._indicated = tuple(n for n in self._numeric
                                if self.feature_set[n].missing == "indicator")
        offset, rows, groups = {}, {}, {}
        for t in self._tables:          # fused layout: per embedding size, tables end to end
            d = self.table_dim(t)
            offset[t] = rows.get(d, 0)
            rows[d] = rows.get(d, 0) + self._tables[t].num_buckets
        for j, n in enumerate(self._cat):  # embedding size -> (columns of CAT_KEY, offsets)
            d = self.table_dim(self.feature_set[n].table)
            cols, offs = groups.setdefault(d, ([], []))
            cols.append(j)
            offs.append(offset[self.feature_set[n].table])
        self._offset, self._rows = offset, tuple(rows.items())
        self._groups = tuple((d, tuple(c), tuple(o)) for d, (c, o) in groups.items())

    @staticmethod
    def _make_lookup(c: Categorical):
        if c.hash_buckets is not None:
            return keras.layers.Hashing(num_bins=c.hash_buckets, name=f"hash_{c.table}")
        cls = keras.layers.StringLookup if c.dtype == "string" else keras.layers.IntegerLookup
        # an array, not a list: Keras wraps a list attribute in a tracked ListWrapper and walks
        # every element of it whenever it collects the model's layers or weights (tens of
        # thousands of ids: ~10 ms a walk, dozens of walks before the first training step)
        vocabulary = np.asarray(c.vocabulary, dtype=object if c.dtype == "string" else np.int64)
        return cls(vocabulary=vocabulary, num_oov_indices=c.num_oov, mask_token=None,
                   name=f"lookup_{c.table}")

    def table_dim(self, table: str) -> int:
        return int(self.dim or self._tables[table].dim)

    def build(self, input_shape=None):
        def init():
            return keras.initializers.RandomNormal(stddev=self.initializer_stddev)

        if self.fused:
            self.fused_tables = {   # string keys: a tracked dict saves only those
                f"{d}d": self.add_weight(name=f"embeddings_{d}d", shape=(n, d), initializer=init(),
                                         trainable=True) for d, n in self._rows}
            self.field_matrix = (
                self.add_weight(name="fields_numeric", shape=(len(self._numeric), self.dim),
                                initializer=init(), trainable=True)
                if self.numeric == "field" and self._numeric else None)
            self.missing_matrix = (   # u_f of the features declared missing="indicator"
                self.add_weight(name="missing_numeric",
                                shape=(len(self._indicated), self._numeric_width()),
                                initializer="zeros", trainable=True)
                if self._indicated else None)
        else:
            self.tables = {
                t: self.add_weight(name=f"embedding_{t}", shape=(c.num_buckets, self.table_dim(t)),
                                   initializer=init(), trainable=True)
                for t, c in self._tables.items()}
            self.field_vectors = {
                n: self.add_weight(name=f"field_{n}", shape=(self.dim,), initializer=init(),
                                   trainable=True)
                for n in self.features
                if self.numeric == "field" and isinstance(self.feature_set[n], Numeric)}
            self.missing_vectors = {
                n: self.add_weight(name=f"missing_{n}", shape=(self._numeric_width(),),
                                   initializer="zeros", trainable=True)
                for n in self._indicated}
        super().build(input_shape)

    def _numeric_width(self):
        return int(self.dim) if self.numeric == "field" else 1

    # -- lookups ----------------------------------------------------------------------------
    def lookup(self, name, values):
        """Row indices of ``values`` in ``name``'s embedding table."""
        table = self.feature_set.categorical_of(name).table
        return self._lookups[table](values)

    def mask(self, inputs, name):
        """Boolean ``[batch, max_len]`` mask of real (non-padding) positions of a sequence."""
        if id_key(name) in inputs:
            return tf.greater_equal(inputs[id_key(name)], 0)
        base = self.feature_set.categorical_of(name)
        return tf.not_equal(inputs[name], base.pad)

    def ids(self, inputs, name):
        """Row indices of ``name``'s values in its table, from raw or encoded ``inputs``
        (a sequence's padding reads row 0; it is masked anyway)."""
        if is_encoded(inputs):
            if name in self._cat:
                return inputs[CAT_KEY][:, self._cat.index(name)]
            return tf.maximum(inputs[id_key(name)], 0)
        return self.lookup(name, inputs[name])

    def encode(self, inputs, rows=None):
        """The lookups alone: ``{".cat": [b, k] int32, ".num": [b, N] float32, seq + ".id":
        [b, L] int32 (-1 at padding)}`` (see the module docstring). Encoded inputs pass through.

        ``rows`` (a scalar tensor, optional): inputs may also be one row ``[1, ...]``, looked up
        once and then repeated to ``rows`` rows (one user's features for many candidates)."""
        if is_encoded(inputs):
            return inputs
        out = {}
        batch = tf.shape(inputs[self.features[0]])[0] if rows is None else rows
        out[NUM_KEY] = (tf.stack([repeat_rows(tf.cast(inputs[n], tf.float32), rows)
                                  for n in self._numeric], 1)
                        if self._numeric else tf.zeros([batch, 0], tf.float32))
        out[CAT_KEY] = (
            tf.stack([repeat_rows(tf.cast(self.lookup(n, inputs[n]), tf.int32), rows)
                      for n in self._cat], 1)
            if self._cat else tf.zeros([batch, 0], tf.int32))
        for n in self._seq:
            ids = tf.cast(self.lookup(n, inputs[n]), tf.int32)
            out[id_key(n)] = repeat_rows(tf.where(self.mask(inputs, n), ids, -1), rows)
        return out

    def embed_ids(self, name, values):
        """Embeddings of raw ids ``values`` (any shape) in ``name``'s table."""
        if not self.built:  # a table can be used through embed_ids before the layer is called
            self.build(None)
        table = self.feature_set.categorical_of(name).table
        return self._gather(table, self.lookup(name, values))

    def embed_rows(self, name, rows):
        """Embeddings of table rows ``rows`` (any shape; the indices :meth:`ids` gives) in
        ``name``'s table."""
        return self._gather(self.feature_set.categorical_of(name).table, rows)

    def _gather(self, table, ids):
        if not self.fused:
            return rows_of(self.tables[table], ids)
        return rows_of(self.fused_tables[f"{self.table_dim(table)}d"],
                       tf.cast(ids, tf.int32) + self._offset[table])

    def _pooled_mean(self, table, ids, mask):
        """``masked_mean(gather(table, ids), mask)`` and ``_penalty`` of that gather, through
        the batch's distinct ids: their rows are gathered once and pooled by one sparse
        ``[batch, distinct]`` x ``[distinct, dim]`` product, so the gradient reaches the table
        as one row per distinct id instead of one per position (a history of 20 in a batch
        of 1,024 is 20,480 positions but a few thousand ids)."""
        rows_in_batch = tf.shape(ids)[0]
        uniq, idx = tf.unique(tf.reshape(ids, [-1]))
        rows = self._gather(table, uniq)                                   # [u, dim]
        m = tf.cast(mask, rows.dtype)
        w = m / tf.maximum(tf.reduce_sum(m, axis=1, keepdims=True), 1.0)    # [b, L]
        at = tf.repeat(tf.range(rows_in_batch, dtype=tf.int64), tf.shape(ids)[1])
        weights = tf.SparseTensor(tf.stack([at, tf.cast(idx, tf.int64)], axis=1),
                                  tf.reshape(w, [-1]),
                                  tf.cast(tf.stack([rows_in_batch, tf.size(uniq)]), tf.int64))
        pooled = tf.sparse.sparse_dense_matmul(weights, rows)
        count = tf.math.unsorted_segment_sum(tf.ones_like(idx, rows.dtype), idx, tf.size(uniq))
        squares = tf.reduce_sum(count * tf.reduce_sum(tf.square(rows), axis=1))
        return pooled, squares / tf.cast(rows_in_batch, rows.dtype)

    def _penalty(self, e):
        return tf.reduce_sum(tf.square(e)) / tf.cast(tf.shape(e)[0], e.dtype)

    # -- outputs ----------------------------------------------------------------------------
    def call(self, inputs, output="dict"):
        """``output``: ``"dict"`` (default, ``{name: embedding}``), ``"fields"`` (see
        :meth:`fields`) or ``"flat"`` (see :meth:`flat`)."""
        if output == "fields":
            return self._fields(inputs)
        if output == "flat":
            return self._flat(inputs)
        if output != "dict":
            raise ValueError(f"output={output!r}, expected 'dict', 'fields' or 'flat'")
        if self.fused:
            num, groups, seqs = self._blocks(inputs)
            out = {}
            if num is not None:
                for i, n in enumerate(self._numeric):
                    out[n] = num[:, i] if self.numeric == "field" else num[:, i:i + 1]
            for (_, cols, _), e in zip(self._groups, groups):
                for j, v in zip(cols, tf.unstack(e, axis=1)):
                    out[self._cat[j]] = v
            out.update(seqs)
            return {n: out[n] for n in self.features}
        out = {}
        penalty = []
        for n in self.features:
            f = self.feature_set[n]
            if isinstance(f, Numeric):
                x = (inputs[NUM_KEY][:, self._numeric.index(n)] if is_encoded(inputs)
                     else inputs[n])
                z = normalise(f, x)[:, None]
                out[n] = z * self.field_vectors[n] if self.numeric == "field" else z
                if n in self._indicated:
                    m = missing_indicator([f], tf.reshape(x, [-1, 1]))
                    out[n] = out[n] + m * self.missing_vectors[n][None, :]
                continue
            table = self.tables[self.feature_set.categorical_of(n).table]
            e = rows_of(table, self.ids(inputs, n))
            if self.embeddings_l2:
                penalty.append(self._penalty(e))
            if isinstance(f, Sequence) and self.sequence == "mean":
                e = masked_mean(e, self.mask(inputs, n))
            out[n] = e
        if penalty:
            self.add_loss(self.embeddings_l2 * tf.add_n(penalty))
        return out

    def _blocks(self, inputs):
        """Fused mode: (numeric block ``[b, N, dim]`` (field) or ``[b, N]`` (value) or None,
        one ``[b, k_d, d]`` block per embedding size, {sequence: embedding})."""
        enc = self.encode(inputs)
        num = None
        if self._numeric:
            feats = [self.feature_set[n] for n in self._numeric]
            z = normalise_many(feats, enc[NUM_KEY])
            num = z[:, :, None] * self.field_matrix[None] if self.numeric == "field" else z
            if self._indicated:
                num = num + self._missing_terms(feats, enc[NUM_KEY])
        penalty, groups = [], []
        for d, cols, offs in self._groups:
            ids = enc[CAT_KEY]
            if len(cols) != len(self._cat):
                ids = tf.gather(ids, list(cols), axis=1)
            e = rows_of(self.fused_tables[f"{d}d"], ids + tf.constant(offs, tf.int32))
            if self.embeddings_l2:
                penalty.append(self._penalty(e))
            groups.append(e)
        seqs = {}
        for n in self._seq:
            table = self.feature_set.categorical_of(n).table
            if self.sequence == "mean":
                e, sq = self._pooled_mean(table, self.ids(enc, n), self.mask(enc, n))
                if self.embeddings_l2:
                    penalty.append(sq)
            else:
                e = self._gather(table, self.ids(enc, n))
                if self.embeddings_l2:
                    penalty.append(self._penalty(e))
            seqs[n] = e
        if penalty:
            self.add_loss(self.embeddings_l2 * tf.add_n(penalty))
        return num, groups, seqs

    def _missing_terms(self, feats, x):
        """Fused mode: ``m_f * u_f`` laid out as the numeric block (``[b, N, dim]`` or
        ``[b, N]``), zero in the columns of features without an indicator."""
        m = missing_indicator(feats, x)                                  # [b, K]
        width = self._numeric_width()
        terms = m[:, :, None] * self.missing_matrix[None]               # [b, K, width]
        if len(self._indicated) != len(self._numeric):
            cols = [self._numeric.index(n) for n in self._indicated]
            # [N, K] 0/1 placement: column j of the block takes indicator k where cols[k] == j
            place = np.zeros((len(self._numeric), len(cols)), np.float32)
            place[cols, np.arange(len(cols))] = 1.0
            terms = tf.einsum("nk,bkw->bnw", tf.constant(place), terms)
        return terms if self.numeric == "field" else terms[:, :, 0]

    def fields(self, inputs):
        """``[batch, fields, dim]`` in ``features`` order: ``stack(self(inputs))``, built
        without per-feature tensors in fused mode. Needs one common size (``dim``), pooled
        sequences and ``numeric="field"`` (or no numeric feature)."""
        return self(inputs, output="fields")

    def flat(self, inputs):
        """All outputs concatenated ``[batch, width]`` (sequences pooled): the categorical
        embeddings, the pooled sequences, then the numeric values (``numeric="value"``) or
        field embeddings."""
        return self(inputs, output="flat")

    def _fields(self, inputs):
        if not self.fused:
            return self.stack(self.call(inputs))
        if self.sequence != "mean" or (self._numeric and self.numeric != "field"):
            raise ValueError("fields() needs sequence='mean' and numeric='field'")
        num, groups, seqs = self._blocks(inputs)
        parts, order = [], []
        if num is not None:
            parts.append(num)
            order += list(self._numeric)
        for (_, cols, _), e in zip(self._groups, groups):
            parts.append(e)
            order += [self._cat[j] for j in cols]
        for n in self._seq:
            parts.append(seqs[n][:, None])
            order.append(n)
        x = parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)
        perm = [order.index(n) for n in self.features]
        return x if perm == list(range(len(perm))) else tf.gather(x, perm, axis=1)

    def _flat(self, inputs):
        if not self.fused:
            e = self.call(inputs)
            names = ([n for n in self.features if n not in self._numeric]
                     + list(self._numeric))
            return tf.concat([tf.reshape(e[n], [-1, _width(e[n])]) for n in names], axis=1)
        if self.sequence != "mean":
            raise ValueError("flat() needs sequence='mean'")
        num, groups, seqs = self._blocks(inputs)
        parts = [tf.reshape(e, [-1, e.shape[1] * e.shape[2]]) for e in groups]
        parts += [seqs[n] for n in self._seq]
        if num is not None:
            parts.append(num if num.shape.rank == 2 else tf.reshape(num, [-1, _width(num)]))
        return parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)

    def stack(self, outputs, names=None):
        """``[batch, fields, dim]`` from the outputs (all of one size, sequences pooled)."""
        names = self.features if names is None else names
        return tf.stack([outputs[n] for n in names], axis=1)

    def get_config(self):
        config = super().get_config()
        config.update({
            "feature_set": self.feature_set.to_dict(), "features": self.features, "dim": self.dim,
            "numeric": self.numeric, "sequence": self.sequence,
            "embeddings_l2": self.embeddings_l2, "initializer_stddev": self.initializer_stddev,
            "fused": self.fused})
        return config


def _width(x):
    return x.shape[-1] if x.shape.rank == 2 else x.shape[1] * x.shape[2]
