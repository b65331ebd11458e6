"""DeepFM: a factorization machine and a DNN on one shared embedding per field.

    y = sigmoid( w_0 + sum_f w_f(x_f)                       # linear (first order)
               + sum_{i<j} <e_i, e_j>                       # FM (second order)
               + w^T MLP([e_1; ...; e_F]) )                 # deep part

The FM and the DNN read the same field embeddings ``e_f`` (size ``dim``); there are no
separate wide features. Numeric features become fields ``z_f * v_f``; sequences are mean-pooled.

Args:
  feature_set: the FeatureSet (or its ``to_dict()``).
  features: feature names used as fields (default: all).
  dim: field embedding size (default 16).
  dnn_units: hidden sizes of the DNN (default ``(256, 128)``).
  dropout: DNN dropout (default 0).
  embeddings_l2: L2 on looked-up embeddings (default 1e-6).
  embeddings_stddev: stddev of the normal initialiser of the field embeddings and the numeric
    fields' vectors (default 0.02). Small initial embeddings keep the FM's pairwise term, a
    sum over every pair of fields, near 0 until the data moves a pair; with 0.05 the pairs of
    fields that carry nothing add noise the first epochs must unlearn. Chosen on the tuning
    members of the criteo family (+0.007 test AUC on average over 0.05; 0.01 to 0.001 score
    the same) and MovieLens 100K, where 0.01 is already worse than 0.05 and 0.02 is not
    (benchmarks/README.md, "Defaults that generalise").
  compute_dtype: precision of the DNN's matmuls: ``"float32"`` (default),
    ``"bfloat16"`` (mixed precision: float32 weights, embeddings, FM terms and logits; faster
    matmuls on CPUs with AMX/AVX512-BF16; results differ from float32 by ~1e-3, also
    between eager calls and a SavedModel) or ``"auto"`` (bfloat16 where the CPU has such
    units; resolved when the model is made and kept in its config).

Inputs: dict of raw feature tensors. Outputs: click probability ``[batch]``.

Example::

    model = DeepFM(ds.feature_set, dim=8, dnn_units=(64, 32))
    p = model(ds.feature_set.arrays(ds.test.head(4)))

Reference: Guo et al., "DeepFM: A Factorization-Machine based Neural Network for CTR
Prediction", IJCAI 2017.
"""
from recsys_tf.backend import keras, tf
from recsys_tf.layers.embedding import FeatureEmbedding
from recsys_tf.layers.fm import FM
from recsys_tf.layers.linear import Linear
from recsys_tf.layers.mlp import MLP
from recsys_tf.models.base import RankingModel


class DeepFM(RankingModel):
    supports_encoded_inputs = True

    def __init__(self, feature_set, features=None, dim=16, dnn_units=(256, 128), dropout=0.0,
                 embeddings_l2=1e-6, compute_dtype="float32", embeddings_stddev=0.02, **kwargs):
        super().__init__(feature_set, features, **kwargs)
        self.dim, self.dnn_units = int(dim), list(dnn_units)
        self.dropout, self.embeddings_l2 = float(dropout), float(embeddings_l2)
        self.embeddings_stddev = float(embeddings_stddev)
        self.embedding = FeatureEmbedding(self.feature_set, self.features, dim=self.dim,
                                          numeric="field", sequence="mean",
                                          embeddings_l2=self.embeddings_l2,
                                          initializer_stddev=self.embeddings_stddev, fused=True,
                                          name="fields")
        self.linear = Linear(self.feature_set, self.features, fused=True, name="linear")
        self.fm = FM(name="fm")
        self.dnn = MLP(self.dnn_units, dropout=self.dropout, compute_dtype=compute_dtype,
                       name="dnn")
        self.compute_dtype_ = self.dnn.compute_dtype_
        self.dnn_logit = keras.layers.Dense(1, name="dnn_logit")

    def logit(self, inputs, training=None):
        fields = self.embedding.fields(inputs)                           # [b, F, dim]
        flat = tf.reshape(fields, [-1, len(self.features) * self.dim])
        deep = self.dnn_logit(self.dnn(flat, training=training))
        return self.linear(inputs) + self.fm(fields) + deep

    def get_config(self):
        config = super().get_config()
        config.update({"dim": self.dim, "dnn_units": self.dnn_units, "dropout": self.dropout,
                       "embeddings_l2": self.embeddings_l2, "compute_dtype": self.compute_dtype_,
                       "embeddings_stddev": self.embeddings_stddev})
        return config
