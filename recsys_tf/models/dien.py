"""DIEN: an interest extractor GRU, an auxiliary loss, and attention-steered interest evolution.

    e_b[t] = [E_item(x_t); E_cat(c_t)],  e_a = [E_item(x_a); E_cat(c_a)]   shared tables
    h_t    = GRU(e_b[t], h_{t-1})                                 interest extractor
    L_aux  = -1/N sum_{i,t} [ log sigmoid(<h_t, e_b[t+1]>)        real next behaviour
                            + log(1 - sigmoid(<h_t, e^-[t+1]>)) ] sampled negative behaviour
    a_t    = softmax_t(TargetAttention(h_t, e_a))                  relevance to the target
    h'_t   = AUGRU(h_t, a_t, h'_{t-1})                            interest evolution
    s      = sum_t m_t e_b[t]                                     sum-pooled history
    y      = sigmoid( w^T MLP([h'_T; e_a; s; e_a * s; e_other]) )
    loss   = BCE(y, label) + aux_loss_weight * L_aux

Behaviours, target and other features are embedded as in :class:`~recsys_tf.models.din.DIN`.
Padded steps are masked: they change neither the GRU states nor the attention; an empty
history gives ``h'_T = 0``. ``h'_T`` is the state after the last real behaviour.

The negative ``e^-[t+1]`` is drawn inside the model, during training only: for each step of
each sequence, a uniformly chosen real behaviour (item and category together) of the batch;
draws that hit the real next item are dropped from the negative term. The auxiliary loss is
added with ``add_loss`` (and reported as the ``aux_loss`` metric) only when ``training=True``,
so an exported model takes exactly the features and needs no negatives. When ``gru_units``
differs from the behaviour size, ``h_t`` is mapped linearly to it before the inner product.

Args:
  feature_set: the FeatureSet (or its ``to_dict()``).
  features: feature names used (default: all).
  behavior: ``(sequence, target)`` pairs sharing tables (default: detected, see DIN).
  dim: embedding size of every table (default 16); None keeps each feature's declared ``dim``.
  gru_units: hidden size of both GRUs (default: the behaviour embedding size).
  evolution: ``"augru"`` (default), ``"agru"`` or ``"aigru"``.
  aux_loss_weight: weight of the auxiliary loss (default 1.0; 0 turns it off).
  attention_units, attention_activation, attention_normalization: the attention between
    ``h_t`` and ``e_a`` (defaults ``(80, 40)``, ``"sigmoid"``, ``"softmax"``).
  attention_score: ``"mlp"`` (default: the local activation unit, as in the authors' code)
    or ``"bilinear"`` (``h_t^T W e_a``, the paper's eq. 4).
  dnn_units: hidden sizes of the final MLP (default ``(200, 80)``).
  dnn_activation, dropout, embeddings_l2: as in DIN (defaults ``"relu"``, 0, 1e-6).
  fused_rnn: run both GRUs through the fused recurrences of :mod:`recsys_tf.layers.augru`
    and cut each batch's behaviours after its longest history (:meth:`DIEN.trimmed`)
    (default True: same values and gradients, a cheaper training step on CPU, more so on
    short histories; benchmarks/README.md); False calls ``keras.layers.GRU`` /
    ``keras.layers.RNN`` over the whole padded sequence (the reference implementation).

Inputs: dict of raw feature tensors. Outputs: click probability ``[batch]``. For one user's
candidates (the export's ``one_user`` signature, :meth:`one_user_probability`) the extractor
runs once on the user's history and its states are repeated for every candidate.

:meth:`~recsys_tf.models.din.DIN.attention_weights` returns ``a_t`` (``[batch, max_len]``,
each row a softmax over the real steps with the default normalisation, 0 at padding): the
attention that gates the AUGRU.

Example::

    model = DIEN(ds.feature_set, dim=16, evolution="augru")
    model.compile("adam", "binary_crossentropy")      # the auxiliary loss is added by the model
    model.fit(dataset, epochs=1)

Reference: Zhou et al., "Deep Interest Evolution Network for Click-Through Rate Prediction",
AAAI 2019.
"""
from recsys_tf.backend import keras, tf
from recsys_tf.layers.augru import MODES, AUGRUCell, extent_of, keras_gru_sequence
from recsys_tf.layers.embedding import id_key, repeat_rows
from recsys_tf.models.din import DIN


class DIEN(DIN):
    def __init__(self, feature_set, features=None, behavior=None, dim=16, gru_units=None,
                 evolution="augru", aux_loss_weight=1.0, attention_units=(80, 40),
                 attention_activation="sigmoid", attention_normalization="softmax",
                 attention_score="mlp", dnn_units=(200, 80), dnn_activation="relu", dropout=0.0,
                 embeddings_l2=1e-6, fused_rnn=True, **kwargs):
        if evolution not in MODES:
            raise ValueError(f"evolution={evolution!r}, expected one of {MODES}")
        super().__init__(feature_set, features, behavior=behavior, dim=dim,
                         attention_units=attention_units,
                         attention_activation=attention_activation,
                         attention_normalization=attention_normalization,
                         attention_score=attention_score, dnn_units=dnn_units,
                         dnn_activation=dnn_activation, dropout=dropout,
                         embeddings_l2=embeddings_l2, **kwargs)
        self.gru_units = int(gru_units or self.behavior_dim)
        self.evolution, self.aux_loss_weight = evolution, float(aux_loss_weight)
        self.extractor = keras.layers.GRU(self.gru_units, return_sequences=True,
                                          name="interest_extractor")
        self.evolver = keras.layers.RNN(AUGRUCell(self.gru_units, mode=evolution, name=evolution),
                                        name="interest_evolution")
        self.fused_rnn = bool(fused_rnn)
        # built now: the fused path reads their weights without calling them
        self.max_len = max_len = self.feature_set[self.behavior[0][0]].max_len
        self.extractor.build((None, max_len, self.behavior_dim))
        self.evolver.build((None, max_len, self.gru_units + 1))
        self.aux_projection = None
        if self.gru_units != self.behavior_dim:
            self.aux_projection = keras.layers.Dense(self.behavior_dim, use_bias=False,
                                                     name="aux_projection")
            # built now, so that serving-only and trained models hold the same weights
            self.aux_projection.build((None, None, self.gru_units))

    @property
    def length_feature(self):
        """The behaviour sequence, when the fused recurrences run (they skip a batch's padding):
        the trainer then batches rows of similar history length together."""
        return self.behavior[0][0] if self.fused_rnn else None

    def attention_keys(self, behaviors, mask):
        """The interest states ``h_t`` ``[b, L, H]`` of the extractor GRU: what DIEN's
        target attention weighs."""
        if self.fused_rnn:
            return keras_gru_sequence(self.extractor, behaviors, mask, max_len=self.max_len)
        return self.extractor(behaviors, mask=mask)

    def trimmed(self, inputs):
        """``inputs`` with the behaviour sequences cut after the batch's last real step.
        What is cut is padding, which changes no output, and every per-step cost (lookups,
        attention, auxiliary loss, recurrences) then follows the batch's longest history
        instead of ``max_len``: with batches of similar lengths (the trainer's
        ``sort_by_length``) most of a short-history batch's work goes."""
        keys = [s for s, _ in self.behavior]
        keys = [id_key(k) if id_key(k) in inputs else k for k in keys]
        mask = self.embedding.mask(inputs, self.behavior[0][0])
        length = tf.maximum(extent_of(mask), 1)
        return dict(inputs, **{k: inputs[k][:, :length] for k in keys})

    @tf.autograph.experimental.do_not_convert   # plain Python, as logit
    def one_user_probability(self, inputs, rows, once):
        """As ``RankingModel``'s, with the interest extractor run once: every row holds the
        same history, so its states ``h_t`` are computed on the first row and repeated (the
        extractor GRU is row-independent; 500 candidates: a call 25% shorter in
        ``benchmarks/one_user.py``)."""
        if not all(s in once for s, _ in self.behavior):   # a history that is not the user's
            return super().one_user_probability(inputs, rows, once)
        x = self.user_row_repeated(inputs, rows, once)
        return tf.sigmoid(tf.squeeze(self.logit(x, training=False, one_history=True), axis=-1))

    # Plain Python (the recurrences are unrolled over max_len): no AutoGraph conversion
    # needed, and skipping it takes seconds off building the training graph.
    @tf.autograph.experimental.do_not_convert
    def logit(self, inputs, training=None, one_history=False):
        """``one_history``: every row holds the same behaviour history (one user's
        candidates), so the extractor runs on the first row only."""
        if self.fused_rnn:
            inputs = self.trimmed(inputs)
        behaviors, mask, target, others = self.embed(inputs)
        if one_history:
            h = repeat_rows(self.attention_keys(behaviors[:1], mask[:1]),       # [b, L, H]
                            tf.shape(behaviors)[0])
        else:
            h = self.attention_keys(behaviors, mask)                            # [b, L, H]
        if training and self.aux_loss_weight:
            rows = [self.embedding.ids(inputs, s) for s, _ in self.behavior]    # table rows
            aux = self.auxiliary_loss(h, behaviors, mask, rows)
            self.add_loss(self.aux_loss_weight * aux)
            self.add_metric(aux, name="aux_loss")
        _, a = self.attention([h, target], mask=mask)                          # [b, L]
        if self.fused_rnn:
            final = self.evolver.cell.sequence(h, a, mask, return_sequences=False,
                                               max_len=self.max_len)          # [b, H]
        else:
            final = self.evolver(tf.concat([h, a[..., None]], axis=-1), mask=mask)
        return self.head(final, behaviors, mask, target, others, training=training)

    def auxiliary_loss(self, h, behaviors, mask, rows):
        """``L_aux``: ``h_t`` against the real ``e_b[t+1]`` and an in-batch sampled negative.
        ``rows``: the table rows of each behaviour sequence (item first), ``[b, L]`` each."""
        width = behaviors.shape[-1]
        # step t is scored against step t + 1: the next behaviour is looked up again from the
        # shifted rows (integers), so no float tensor is shifted or sliced (their gradients
        # are copies of whole [b, L, D] tensors); the last step has no next one
        shifted = [tf.concat([r[:, 1:], tf.zeros_like(r[:, :1])], axis=1) for r in rows]
        following = tf.concat([self.embedding.embed_rows(s, r)
                               for (s, _), r in zip(self.behavior, shifted)], axis=-1)
        has_next = tf.concat([mask[:, 1:], tf.zeros_like(mask[:, :1])], axis=1)
        valid = tf.cast(tf.logical_and(mask, has_next), h.dtype)              # t and t+1 real
        # the negatives: uniform draws among the batch's real behaviours (flat positions)
        items, following_items = rows[0], shifted[0]
        real = tf.where(tf.reshape(mask, [-1]))[:, 0]                           # [n]
        n = tf.shape(real)[0]
        draw = tf.random.uniform(tf.shape(mask), maxval=tf.maximum(n, 1), dtype=tf.int32)
        position = tf.gather(tf.concat([real, tf.zeros([1], real.dtype)], 0), draw)  # [b, L]
        negative = tf.gather(tf.reshape(behaviors, [-1, width]), position)       # [b, L, D]
        negative_items = tf.gather(tf.reshape(items, [-1]), position)
        valid_negative = valid * tf.cast(tf.not_equal(negative_items, following_items), h.dtype)
        state = h if self.aux_projection is None else self.aux_projection(h)
        positive_logit = tf.reduce_sum(state * following, axis=-1)
        negative_logit = tf.reduce_sum(state * negative, axis=-1)
        total = -(tf.reduce_sum(valid * tf.math.log_sigmoid(positive_logit))
                  + tf.reduce_sum(valid_negative * tf.math.log_sigmoid(-negative_logit)))
        return total / tf.maximum(tf.reduce_sum(valid), 1.0)

    def get_config(self):
        config = super().get_config()
        config.update({"gru_units": self.gru_units, "evolution": self.evolution,
                       "aux_loss_weight": self.aux_loss_weight, "fused_rnn": self.fused_rnn})
        return config
