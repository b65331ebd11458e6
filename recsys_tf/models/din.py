"""DIN: the candidate item attends over the user's behaviours (the baseline DIEN builds on).

    e_b[j] = [E_item(x_j); E_cat(c_j)]        behaviour j, through the target's own tables
    e_a    = [E_item(x_a); E_cat(c_a)]        the candidate (target) item
    v_U    = sum_j a(e_b[j], e_a) e_b[j]      a = local activation unit (TargetAttention)
    s      = sum_j m_j e_b[j]                 sum-pooled history
    y      = sigmoid( w^T MLP([v_U; e_a; s; e_a * s; e_other]) )

``e_other`` are the embeddings of every other feature (user profile, context; numeric values
as they are, other sequences mean-pooled). Padded behaviours (id = padding) are masked out; a
user with no behaviour gets ``v_U = s = 0``.

Behaviours are given as ``(sequence feature, target feature)`` pairs that share a table, e.g.
``(("history", "item_id"), ("history_category", "category"))``; by default every Sequence
whose ``of`` is an item-role feature pairs with that feature (the item id first).

Args:
  feature_set: the FeatureSet (or its ``to_dict()``).
  features: feature names used (default: all).
  behavior: the ``(sequence, target)`` pairs (default: detected as above).
  dim: embedding size of every table (default 16); None keeps each feature's declared ``dim``.
  attention_units: hidden sizes of the attention MLP (default ``(80, 40)``).
  attention_activation: its activation (default ``"sigmoid"``).
  attention_normalization: ``"none"`` (default; DIN keeps raw scores), ``"softmax"`` or
    ``"sigmoid"``.
  attention_score: ``"mlp"`` (default, the local activation unit) or ``"bilinear"``.
  dnn_units: hidden sizes of the final MLP (default ``(200, 80)``).
  dnn_activation: its activation (default ``"relu"``).
  dropout: dropout of the final MLP (default 0).
  embeddings_l2: L2 on looked-up embeddings (default 1e-6).

Inputs: dict of raw feature tensors. Outputs: click probability ``[batch]``.

:meth:`DIN.attention_weights` returns the weights ``a_j`` the candidate puts on each
behaviour (``[batch, max_len]``, 0 at padding), e.g. to draw them as a heat map.

Example::

    model = DIN(ds.feature_set, dim=16)
    x = ds.feature_set.arrays(ds.test.head(4))
    p = model(x)
    a = model.attention_weights(x).numpy()     # [4, max_len]

Reference: Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018.
"""
from recsys_tf.backend import keras, tf
from recsys_tf.features import Categorical, Sequence
from recsys_tf.layers.attention import TargetAttention
from recsys_tf.layers.embedding import FeatureEmbedding, masked_mean
from recsys_tf.layers.mlp import MLP
from recsys_tf.models.base import RankingModel


def resolve_behavior(feature_set, features, behavior=None):
    """Validated ``[(sequence, target), ...]``; detected from ``feature_set`` when None."""
    if behavior is None:
        pairs = [(f.name, f.of) for f in feature_set
                 if isinstance(f, Sequence) and f.name in features and f.of in features
                 and feature_set[f.of].role == "item"]
        pairs.sort(key=lambda p: p[1] != feature_set.item_id)  # the item id first (stable)
    else:
        pairs = [tuple(p) for p in behavior]
    if not pairs:
        raise ValueError("no behaviour sequence: pass behavior=((sequence, target), ...) or "
                         "declare a Sequence whose `of` is an item-role Categorical; features "
                         f"are {list(features)}")
    lengths = set()
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"behavior entry {pair!r}: expected (sequence, target)")
        seq, target = pair
        for name in pair:
            if name not in features:
                raise ValueError(f"behavior {pair!r}: {name!r} is not among the features {list(features)}")
        if not isinstance(feature_set[seq], Sequence):
            raise ValueError(f"behavior {pair!r}: {seq!r} is not a Sequence feature")
        if not isinstance(feature_set[target], Categorical):
            raise ValueError(f"behavior {pair!r}: {target!r} is not a Categorical feature")
        if feature_set.categorical_of(seq).table != feature_set[target].table:
            raise ValueError(f"behavior {pair!r}: the sequence and the target must share an "
                             "embedding table (the sequence's `of` or the same `table`)")
        lengths.add(feature_set[seq].max_len)
    if len(lengths) > 1:
        raise ValueError(f"behaviour sequences {[p[0] for p in pairs]} differ in max_len {sorted(lengths)}")
    return [list(p) for p in pairs]


class DIN(RankingModel):
    def __init__(self, feature_set, features=None, behavior=None, dim=16, attention_units=(80, 40),
                 attention_activation="sigmoid", attention_normalization="none",
                 attention_score="mlp", dnn_units=(200, 80), dnn_activation="relu", dropout=0.0,
                 embeddings_l2=1e-6, **kwargs):
        super().__init__(feature_set, features, **kwargs)
        self.behavior = resolve_behavior(self.feature_set, self.features, behavior)
        self.dim = None if dim is None else int(dim)
        self.attention_units = [int(u) for u in attention_units]
        self.attention_activation = attention_activation
        self.attention_normalization = attention_normalization
        self.attention_score = attention_score
        self.dnn_units, self.dnn_activation = [int(u) for u in dnn_units], dnn_activation
        self.dropout, self.embeddings_l2 = float(dropout), float(embeddings_l2)
        self.embedding = FeatureEmbedding(self.feature_set, self.features, dim=self.dim,
                                          embeddings_l2=self.embeddings_l2, name="embedding")
        self.behavior_dim = sum(
            self.embedding.table_dim(self.feature_set[t].table) for _, t in self.behavior)
        self.attention = TargetAttention(self.attention_units, self.attention_activation,
                                         self.attention_normalization, self.attention_score,
                                         name="attention")
        self.dnn = MLP(self.dnn_units, activation=self.dnn_activation, dropout=self.dropout,
                       name="dnn")
        self.dnn_logit = keras.layers.Dense(1, name="dnn_logit")

    def embed(self, inputs):
        """``(e_b [b, L, D], mask [b, L], e_a [b, D], [e_other...])`` from raw inputs."""
        e = self.embedding(inputs)
        sequences, targets = [s for s, _ in self.behavior], [t for _, t in self.behavior]
        behaviors = tf.concat([e[s] for s in sequences], axis=-1)
        mask = self.embedding.mask(inputs, sequences[0])
        target = tf.concat([e[t] for t in targets], axis=-1)
        others = []
        for n in self.features:
            if n in sequences or n in targets:
                continue
            if isinstance(self.feature_set[n], Sequence):
                others.append(masked_mean(e[n], self.embedding.mask(inputs, n)))
            else:
                others.append(e[n])
        return behaviors, mask, target, others

    def attention_keys(self, behaviors, mask):
        """What the target attends over, ``[b, L, d]``: DIN attends over the behaviour
        embeddings themselves."""
        return behaviors

    def attention_weights(self, inputs):
        """Target-attention weights over the behaviour history, as the model computes them.

        Row ``i``, position ``j`` is the weight candidate ``i`` puts on behaviour ``j`` of its
        history (oldest first). Padded positions get 0, and a row without any behaviour is
        all 0. What a real position holds depends on ``attention_normalization``:
        ``"softmax"`` - non-negative, each row with a behaviour sums to 1; ``"sigmoid"`` - in
        (0, 1); ``"none"`` (DIN's default) - the raw scores, any sign. For DIEN these are the
        weights over the interest states ``h_t`` that gate the AUGRU.

        Args:
          inputs: dict of raw feature values (tensors, numpy arrays or lists), as for
            ``model(inputs)``.

        Returns:
          float32 tensor ``[batch, max_len]`` (``.numpy()`` for an array).

        Example::

            x = fs.arrays(frame, model.features)
            weights = model.attention_weights(x).numpy()
        """
        inputs = self.encoded({k: tf.convert_to_tensor(v) for k, v in inputs.items()})
        behaviors, mask, target, _ = self.embed(inputs)
        _, weights = self.attention([self.attention_keys(behaviors, mask), target], mask=mask)
        return weights

    def head(self, interest, behaviors, mask, target, others, training=None):
        """``w^T MLP([interest; e_a; s; e_a * s; e_other])`` with ``s`` the sum-pooled history."""
        pooled = tf.reduce_sum(behaviors * tf.cast(mask, behaviors.dtype)[..., None], axis=1)
        x = tf.concat([interest, target, pooled, target * pooled] + others, axis=-1)
        return self.dnn_logit(self.dnn(x, training=training))

    @tf.autograph.experimental.do_not_convert   # plain Python over static shapes
    def logit(self, inputs, training=None):
        behaviors, mask, target, others = self.embed(inputs)
        interest, _ = self.attention([self.attention_keys(behaviors, mask), target], mask=mask)
        return self.head(interest, behaviors, mask, target, others, training=training)

    def get_config(self):
        config = super().get_config()
        config.update({
            "behavior": [list(p) for p in self.behavior], "dim": self.dim,
            "attention_units": list(self.attention_units),
            "attention_activation": self.attention_activation,
            "attention_normalization": self.attention_normalization,
            "attention_score": self.attention_score,
            "dnn_units": list(self.dnn_units), "dnn_activation": self.dnn_activation,
            "dropout": self.dropout, "embeddings_l2": self.embeddings_l2})
        return config
