"""Two-tower retrieval: a query tower and a candidate tower trained with in-batch softmax.

    q = normalize(MLP_q([e(user features); e(context); mean_masked(e(history))]))
    c = normalize(MLP_c([e(item features)]))
    s(q, c) = <q, c> / temperature
    L = - sum_i log softmax_j( s(q_i, c_j) - log Q(c_j) )_i        (in-batch negatives)

``mean_masked(e(history)) = sum_j m_j e(h_j) / max(1, sum_j m_j)`` with ``m_j = h_j != pad``,
so an empty history embeds as zeros; unknown user or item ids fall into OOV rows. Both never
raise, so every query gets a top-k.

``Q(c)`` is the item's sampling probability in the training stream (its frequency), the
log-q correction of Yi et al. 2019 that stops popular items being over-penalised as in-batch
negatives; accidental hits (the same item as another row's positive) can be removed.
History ids share the item-id table of the candidate tower's ``item_id`` feature, so a user's
recent items and the candidates live in one embedding space.

Args:
  feature_set: the FeatureSet (or its ``to_dict()``).
  query_features: names for the query tower (default: user- and context-role features).
  candidate_features: names for the candidate tower (default: item-role features).
  dim: output embedding size (default 32).
  hidden: hidden sizes of each tower's MLP (default ``(64,)``).
  normalize: L2-normalise both towers' outputs, so scores are cosine similarities
    (default True; the temperature then sets the softmax's sharpness).
  temperature: softmax temperature (default 0.05 for normalised embeddings).
  logq_correction: subtract ``log Q(item)`` from logits during training (default True;
    frequencies set with :meth:`set_item_frequencies`).
  remove_accidental_hits: mask in-batch negatives equal to the positive (default True).
  num_hard_negatives: hard-negative mining: keep only the n highest-scoring in-batch
    negatives per query in the softmax (default None = all).

Example::

    model = TwoTower(ds.feature_set, dim=32)
    model.set_item_frequencies(ds.retrieval_train[fs.item_id])
    model.compile(keras.optimizers.Adagrad(0.1))
    model.fit(make_dataset(...), epochs=3)
    q = model.query_model(features)            # [batch, 32]

References: Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
Recommendations", RecSys 2019; TensorFlow Recommenders' retrieval task.
"""
import numpy as np
import tensorflow_recommenders as tfrs

from recsys_tf.backend import keras, tf
from recsys_tf.features import FeatureSet, Numeric, Sequence
from recsys_tf.layers.embedding import FeatureEmbedding, masked_mean, rows_of
from recsys_tf.layers.mlp import MLP


class Tower(keras.layers.Layer):
    """One tower: ``y = normalize(W MLP([e(x_1); ...; e(x_n)]))`` (sequences mean-pooled,
    padding masked; ``normalize`` optional)."""

    def __init__(self, feature_set, features, dim=32, hidden=(64,), normalize=True, **kwargs):
        super().__init__(**kwargs)
        self.embedding = FeatureEmbedding(feature_set, features, sequence="mean", name="embedding")
        self.feature_set, self.features = self.embedding.feature_set, list(features)
        self.dim, self.hidden, self.normalize = int(dim), list(hidden), bool(normalize)
        self.mlp = MLP(self.hidden, name="mlp")
        self.project = keras.layers.Dense(self.dim, name="project")

    def call(self, inputs, training=None):
        e = self.embedding(inputs)
        x = tf.concat([e[n] for n in self.features], axis=-1)
        return self._output(x, training)

    def _output(self, x, training):
        y = self.project(self.mlp(x, training=training))
        return tf.math.l2_normalize(y, axis=-1) if self.normalize else y

    def get_config(self):
        config = super().get_config()
        config.update({"feature_set": self.feature_set.to_dict(), "features": self.features,
                       "dim": self.dim, "hidden": self.hidden, "normalize": self.normalize})
        return config


class TwoTower(tfrs.Model):
    """The two-tower retriever of this module (see the module docstring for the formula,
    arguments, example and references). ``query_model`` / ``candidate_model`` give the two
    embeddings; ``compute_loss`` is TFRS's ``tasks.Retrieval`` over in-batch negatives."""

    def __init__(self, feature_set, query_features=None, candidate_features=None, dim=32,
                 hidden=(64,), temperature=0.05, logq_correction=True,
                 remove_accidental_hits=True, num_hard_negatives=None, normalize=True,
                 **kwargs):
        super().__init__(**kwargs)
        fs = feature_set if isinstance(feature_set, FeatureSet) else FeatureSet.from_dict(feature_set)
        if fs.item_id is None:
            raise ValueError("TwoTower needs a FeatureSet with item_id set")
        self.query_features = list(query_features or fs.with_role("user", "context"))
        self.candidate_features = list(candidate_features or fs.with_role("item"))
        self.feature_set = fs.select(self.query_features + self.candidate_features)
        self.item_id = fs.item_id
        if self.item_id not in self.candidate_features:
            raise ValueError(f"candidate_features {self.candidate_features} must include the "
                             f"item id feature {self.item_id!r}")
        self.dim, self.hidden, self.normalize = int(dim), list(hidden), bool(normalize)
        if num_hard_negatives is not None and int(num_hard_negatives) < 1:
            raise ValueError(f"num_hard_negatives={num_hard_negatives}, expected None or >= 1")
        self.temperature, self.logq_correction = float(temperature), bool(logq_correction)
        self.remove_accidental_hits = bool(remove_accidental_hits)
        self.num_hard_negatives = num_hard_negatives
        # Sequences of item ids must share the candidate tower's item table: one tower owns
        # the table, so history features go through the candidate tower's embedding.
        self.shared_history = [n for n in self.query_features
                               if isinstance(self.feature_set[n], Sequence)
                               and self.feature_set.categorical_of(n).table
                               in {self.feature_set.categorical_of(c).table
                                   for c in self.candidate_features
                                   if not isinstance(self.feature_set[c], Numeric)}]
        own = [n for n in self.query_features if n not in self.shared_history]
        self.query_tower = _QueryTower(self.feature_set, own, self.shared_history, dim, hidden,
                                       normalize=normalize, name="query_tower")
        self.candidate_tower = Tower(self.feature_set, self.candidate_features, dim, hidden,
                                     normalize=normalize, name="candidate_tower")
        self.query_tower.candidate_tower = self.candidate_tower
        self.task = tfrs.tasks.Retrieval(temperature=self.temperature,
                                         remove_accidental_hits=self.remove_accidental_hits,
                                         num_hard_negatives=num_hard_negatives)
        item = self.feature_set[self.item_id]
        self._log_q = tf.Variable(tf.zeros([item.num_buckets]), trainable=False, name="log_q")

    def set_item_frequencies(self, item_ids):
        """Sets ``log Q(item)`` from the item ids of the training positives (with repeats)."""
        ids = np.asarray(item_ids)
        ids = ids.astype(str).astype(object) if self.feature_set[self.item_id].dtype == "string" \
            else ids.astype(np.int64)
        idx = self.candidate_tower.embedding.lookup(self.item_id, tf.constant(ids))
        counts = np.bincount(idx.numpy(), minlength=self._log_q.shape[0]).astype(np.float64)
        q = (counts + 1.0) / (counts.sum() + len(counts))
        self._log_q.assign(np.log(q).astype(np.float32))

    def query_model(self, inputs, training=None):
        return self.query_tower(inputs, training=training)

    def candidate_model(self, inputs, training=None):
        return self.candidate_tower(inputs, training=training)

    def call(self, inputs, training=None):
        # candidate tower first: it owns the item tables the query tower's histories share,
        # so they are created (and named) under it
        c = self.candidate_model(inputs, training)
        return self.query_model(inputs, training), c

    def compute_loss(self, inputs, training=False):
        q, c = self(inputs, training=training)
        ids = inputs[self.item_id]
        log_q = None
        if self.logq_correction:
            log_q = rows_of(self._log_q, self.candidate_tower.embedding.lookup(self.item_id, ids))
        return self.task(q, c, candidate_sampling_probability=None if log_q is None else tf.exp(log_q),
                         candidate_ids=ids if self.remove_accidental_hits else None,
                         compute_metrics=False, compute_batch_metrics=False)

    def query_signature(self):
        return self.feature_set.input_signature(self.query_features)

    def candidate_signature(self):
        return self.feature_set.input_signature(self.candidate_features)

    def get_config(self):
        return {"feature_set": self.feature_set.to_dict(), "query_features": self.query_features,
                "candidate_features": self.candidate_features, "dim": self.dim,
                "hidden": self.hidden, "temperature": self.temperature,
                "logq_correction": self.logq_correction,
                "remove_accidental_hits": self.remove_accidental_hits,
                "num_hard_negatives": self.num_hard_negatives, "normalize": self.normalize}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class _QueryTower(Tower):
    """A Tower whose item-id sequences are embedded with the candidate tower's item table."""

    def __init__(self, feature_set, features, shared_history, dim, hidden, normalize=True,
                 **kwargs):
        super().__init__(feature_set, features, dim, hidden, normalize=normalize, **kwargs)
        fs = feature_set if isinstance(feature_set, FeatureSet) else FeatureSet.from_dict(feature_set)
        self.shared_history = list(shared_history)
        self._history_base = {n: fs.categorical_of(n) for n in self.shared_history}
        self.candidate_tower = None  # set by TwoTower; not tracked twice

    def call(self, inputs, training=None):
        e = self.embedding(inputs)
        parts = [e[n] for n in self.features]
        cand = self.candidate_tower.embedding
        for n in self.shared_history:
            base = self._history_base[n]
            seq = cand.embed_ids(base.name, inputs[n])
            parts.append(masked_mean(seq, tf.not_equal(inputs[n], base.pad)))
        x = tf.concat(parts, axis=-1)
        return self._output(x, training)
