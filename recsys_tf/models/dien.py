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
    (default True: same values and gradients, a training step about 1.4x cheaper on CPU);
    False calls ``keras.layers.GRU`` / ``keras.layers.RNN`` (the reference implementation;
    also used when the sequence length is not static).

Inputs: dict of raw feature tensors. Outputs: click probability ``[batch]``.

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
from recsys_tf.layers.augru import MODES, AUGRUCell, keras_gru_sequence
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
        max_len = self.feature_set[self.behavior[0][0]].max_len
        self.extractor.build((None, max_len, self.behavior_dim))
        self.evolver.build((None, max_len, self.gru_units + 1))
        self.aux_projection = None
        if self.gru_units != self.behavior_dim:
            self.aux_projection = keras.layers.Dense(self.behavior_dim, use_bias=False,
                                                     name="aux_projection")
            # built now, so that serving-only and trained models hold the same weights
            self.aux_projection.build((None, None, self.gru_units))

    def _fused(self, behaviors):
        return self.fused_rnn and behaviors.shape[1] is not None

    def attention_keys(self, behaviors, mask):
        """The interest states ``h_t`` ``[b, L, H]`` of the extractor GRU: what DIEN's
        target attention weighs."""
        if self._fused(behaviors):
            return keras_gru_sequence(self.extractor, behaviors, mask)
        return self.extractor(behaviors, mask=mask)

    # Plain Python over static shapes: no AutoGraph conversion needed, and skipping it takes
    # seconds off building the training graph (the unrolled recurrences are long).
    @tf.autograph.experimental.do_not_convert
    def logit(self, inputs, training=None):
        behaviors, mask, target, others = self.embed(inputs)
        fused = self._fused(behaviors)
        h = self.attention_keys(behaviors, mask)                                # [b, L, H]
        if training and self.aux_loss_weight:
            items = self.embedding.ids(inputs, self.behavior[0][0])          # table rows
            aux = self.auxiliary_loss(h, behaviors, mask, items)
            self.add_loss(self.aux_loss_weight * aux)
            self.add_metric(aux, name="aux_loss")
        _, a = self.attention([h, target], mask=mask)                          # [b, L]
        if fused:
            final = self.evolver.cell.sequence(h, a, mask, return_sequences=False)  # [b, H]
        else:
            final = self.evolver(tf.concat([h, a[..., None]], axis=-1), mask=mask)
        return self.head(final, behaviors, mask, target, others, training=training)

    def auxiliary_loss(self, h, behaviors, mask, items):
        """``L_aux``: ``h_t`` against the real ``e_b[t+1]`` and an in-batch sampled negative."""
        steps, width = behaviors.shape[1], behaviors.shape[-1]
        # the negatives: uniform draws among the batch's real behaviours (flat positions)
        real = tf.where(tf.reshape(mask, [-1]))[:, 0]                           # [n]
        n = tf.shape(real)[0]
        draw = tf.random.uniform(tf.shape(mask), maxval=tf.maximum(n, 1), dtype=tf.int32)
        position = tf.gather(tf.concat([real, tf.zeros([1], real.dtype)], 0), draw)  # [b, L]
        negative = tf.gather(tf.reshape(behaviors, [-1, width]), position)       # [b, L, D]
        negative_items = tf.gather(tf.reshape(items, [-1]), position)
        # step t is scored against step t + 1 (rolled back by one; the last step has none)
        following, following_items = tf.roll(behaviors, -1, axis=1), tf.roll(items, -1, axis=1)
        has_next = tf.logical_and(mask, tf.roll(mask, -1, axis=1))
        not_last = tf.range(tf.shape(mask)[1]) < tf.shape(mask)[1] - 1 if steps is None \
            else tf.constant([True] * (steps - 1) + [False])
        valid = tf.cast(tf.logical_and(has_next, not_last), h.dtype)           # t and t+1 real
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
