"""xDeepFM: a linear term, a Compressed Interaction Network and a DNN on shared embeddings.

    y = sigmoid( w_0 + sum_f w_f(x_f)                       # linear (first order)
               + w_cin^T p^+                                # CIN: explicit, vector-wise crosses
               + w_dnn^T MLP([e_1; ...; e_F]) )             # DNN: implicit, bit-wise crosses

``p^+`` concatenates the sum-pooled feature maps of every CIN layer (see
:class:`~recsys_tf.layers.cin.CIN`); the CIN and the DNN read the same field embeddings ``e_f``
(size ``dim``). Numeric features become fields ``z_f * v_f``; sequences are mean-pooled.

Args:
  feature_set: the FeatureSet (or its ``to_dict()``).
  features: feature names used as fields (default: all).
  dim: field embedding size (default 16).
  cin_sizes: feature maps per CIN layer (default ``(32, 32)``; DeepCTR's default is
    ``(128, 128)``, which costs about 8x the CIN arithmetic on 26 fields and scored the same
    test AUC on the tuning members of the criteo family, within 0.0006; benchmarks/README.md,
    "Defaults that generalise").
  cin_features: the fields the CIN crosses: ``"categorical"`` (default: the categorical and
    sequence features, i.e. the id embeddings, as DeepCTR's xDeepFM does; numeric fields
    then reach the DNN and the linear term only; every feature when there is no categorical
    one), None (every feature) or a list of names. Its cost grows with the square of their
    number: on Criteo's 39 fields the 26 categorical ones cost (26/39)^2 = 44% of the
    crosses, and on the held-out criteo-family sets crossing them alone lost no AUC
    (benchmarks/README.md, "Defaults that generalise").
  split_half: CIN layers but the last send half their maps to the output (default True).
  dnn_units: hidden sizes of the DNN (default ``(256, 128)``).
  dropout: DNN dropout (default 0).
  embeddings_l2: L2 on looked-up embeddings (default 1e-6).
  compute_dtype: precision of the DNN's and the CIN's arithmetic: ``"float32"`` (default),
    ``"bfloat16"`` (mixed precision: float32 weights, embeddings, FM terms and logits; 2-3x
    faster matmuls on CPUs with AMX/AVX512-BF16; results differ from float32 by ~1e-3, also
    between eager calls and a SavedModel) or ``"auto"`` (bfloat16 where the CPU has such
    units; resolved when the model is made and kept in its config).

Inputs: dict of raw feature tensors. Outputs: click probability ``[batch]``.

Example::

    model = XDeepFM(ds.feature_set, dim=8, cin_sizes=(32, 32), dnn_units=(64, 32))
    p = model(ds.feature_set.arrays(ds.test.head(4)))

Reference: Lian et al., "xDeepFM: Combining Explicit and Implicit Feature Interactions for
Recommender Systems", KDD 2018.
"""
from recsys_tf.backend import keras, tf
from recsys_tf.features import Numeric
from recsys_tf.layers.cin import CIN
from recsys_tf.layers.embedding import FeatureEmbedding
from recsys_tf.layers.linear import Linear
from recsys_tf.layers.mlp import MLP
from recsys_tf.models.base import RankingModel


class XDeepFM(RankingModel):
    supports_encoded_inputs = True

    def __init__(self, feature_set, features=None, dim=16, cin_sizes=(32, 32), split_half=True,
                 dnn_units=(256, 128), dropout=0.0, embeddings_l2=1e-6, compute_dtype="float32",
                 cin_features="categorical", **kwargs):
        super().__init__(feature_set, features, **kwargs)
        self.cin_features_arg = cin_features if isinstance(cin_features, str) or \
            cin_features is None else list(cin_features)
        if isinstance(cin_features, str):
            if cin_features != "categorical":
                raise ValueError(f"XDeepFM cin_features={cin_features!r}, expected "
                                 "'categorical', None or a list of feature names")
            ids = [n for n in self.features if not isinstance(self.feature_set[n], Numeric)]
            cin_features = ids if ids and len(ids) < len(self.features) else None
        self.cin_features = None if cin_features is None else list(cin_features)
        for n in self.cin_features or ():
            if n not in self.features:
                raise ValueError(f"XDeepFM cin_features: {n!r} is not one of {self.features}")
        if self.cin_features is not None and not self.cin_features:
            raise ValueError("XDeepFM cin_features is empty: give None (all) or some features")
        self.dim, self.cin_sizes, self.split_half = int(dim), list(cin_sizes), bool(split_half)
        self.dnn_units, self.dropout = list(dnn_units), float(dropout)
        self.embeddings_l2 = float(embeddings_l2)
        self.embedding = FeatureEmbedding(self.feature_set, self.features, dim=self.dim,
                                          numeric="field", sequence="mean",
                                          embeddings_l2=self.embeddings_l2, fused=True,
                                          name="fields")
        self.linear = Linear(self.feature_set, self.features, fused=True, name="linear")
        self.cin = CIN(self.cin_sizes, split_half=self.split_half, compute_dtype=compute_dtype,
                       name="cin")
        self.cin_logit = keras.layers.Dense(1, name="cin_logit")
        self.dnn = MLP(self.dnn_units, dropout=self.dropout, compute_dtype=compute_dtype,
                       name="dnn")
        self.compute_dtype_ = self.dnn.compute_dtype_
        self.dnn_logit = keras.layers.Dense(1, name="dnn_logit")

    def logit(self, inputs, training=None):
        fields = self.embedding.fields(inputs)                           # [b, F, dim]
        flat = tf.reshape(fields, [-1, len(self.features) * self.dim])
        cin_in = fields
        if self.cin_features is not None and self.cin_features != self.features:
            cols = [self.features.index(n) for n in self.cin_features]
            cin_in = (fields[:, cols[0]:cols[-1] + 1] if cols == list(range(cols[0], cols[-1] + 1))
                      else tf.gather(fields, cols, axis=1))
        explicit = self.cin_logit(self.cin(cin_in))
        implicit = self.dnn_logit(self.dnn(flat, training=training))
        return self.linear(inputs) + explicit + implicit

    def get_config(self):
        config = super().get_config()
        config.update({"dim": self.dim, "cin_sizes": self.cin_sizes, "split_half": self.split_half,
                       "dnn_units": self.dnn_units, "dropout": self.dropout,
                       "embeddings_l2": self.embeddings_l2, "compute_dtype": self.compute_dtype_,
                       "cin_features": self.cin_features_arg})
        return config
