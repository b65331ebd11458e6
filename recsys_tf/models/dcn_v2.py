"""DCN-v2: a cross network and a DNN on the concatenated embeddings, stacked or in parallel.

    x_0 = [e_1; ...; e_C; z_1; ...; z_N]                     # embeddings, then numeric values
    x_{l+1} = x_0 o (W_l x_l + b_l) + x_l,  l = 0..L-1        # cross network (W_l may be U V^T)

    stacked:   y = sigmoid( w^T MLP(x_L) + b )
    parallel:  y = sigmoid( w^T [x_L; MLP(x_0)] + b )

As in the paper, ``x_0`` concatenates the categorical embeddings with the normalised numeric
values ``z_f`` themselves (one entry each, no field vector; ``numeric="field"`` gives each a
field embedding ``z_f * v_f`` instead); sequences are mean-pooled
embeddings of their ids. With ``num_experts > 1`` each cross layer is a mixture of low-rank
experts (see :mod:`recsys_tf.layers.cross`).

Args:
  feature_set: the FeatureSet (or its ``to_dict()``).
  features: feature names in ``x_0`` (default: all).
  dim: embedding size of every categorical feature (default 16; None keeps each feature's
    declared ``dim``).
  cross_layers: number of cross layers ``L`` (default 3).
  projection_dim: None for full-rank cross layers (default), or the low rank ``r``.
  num_experts: low-rank experts per cross layer (default 1; > 1 needs ``projection_dim``).
  structure: ``"stacked"`` (default) or ``"parallel"``.
  dnn_units: hidden sizes of the DNN (default ``(256, 128)``).
  dropout: DNN dropout (default 0).
  embeddings_l2: L2 on looked-up embeddings (default 1e-6).
  compute_dtype: precision of the DNN's and the cross layers' matmuls: ``"float32"`` (default),
    ``"bfloat16"`` (mixed precision: float32 weights, embeddings, FM terms and logits; faster
    matmuls on CPUs with AMX/AVX512-BF16; results differ from float32 by ~1e-3, also
    between eager calls and a SavedModel) or ``"auto"`` (bfloat16 where the CPU has such
    units; resolved when the model is made and kept in its config).
  numeric: how a numeric feature enters ``x_0``: ``"value"`` (default: its normalised value
    ``z_f``, one entry, as in the paper and DeepCTR's DCN) or ``"field"`` (a field embedding
    ``z_f * v_f`` of size ``dim``, as DeepFM's fields; needs ``dim``). ``"field"`` scored
    +0.0049 test AUC on average over the five tuning members of the criteo family, but widens
    ``x_0`` (Criteo: 429 -> 624 entries) and so every full-rank cross layer, which slows
    training (measured in benchmarks/README.md, "Defaults that generalise").

Inputs: dict of raw feature tensors. Outputs: click probability ``[batch]``.

Example::

    model = DCNv2(ds.feature_set, dim=8, projection_dim=16, structure="parallel")
    p = model(ds.feature_set.arrays(ds.test.head(4)))

Reference: Wang et al., "DCN V2: Improved Deep & Cross Network and Practical Lessons for
Web-scale Learning to Rank Systems", WWW 2021.
"""
from recsys_tf.backend import keras, tf
from recsys_tf.layers.cross import CrossNetwork
from recsys_tf.layers.embedding import FeatureEmbedding
from recsys_tf.layers.mlp import MLP
from recsys_tf.models.base import RankingModel

STRUCTURES = ("stacked", "parallel")


class DCNv2(RankingModel):
    supports_encoded_inputs = True

    def __init__(self, feature_set, features=None, dim=16, cross_layers=3, projection_dim=None,
                 num_experts=1, structure="stacked", dnn_units=(256, 128), dropout=0.0,
                 embeddings_l2=1e-6, compute_dtype="float32", numeric="value", **kwargs):
        super().__init__(feature_set, features, **kwargs)
        if structure not in STRUCTURES:
            raise ValueError(f"DCNv2 structure={structure!r}, expected one of {STRUCTURES}")
        self.dim = None if dim is None else int(dim)
        self.cross_layers, self.num_experts = int(cross_layers), int(num_experts)
        self.projection_dim = None if projection_dim is None else int(projection_dim)
        self.structure, self.dnn_units = structure, list(dnn_units)
        self.dropout, self.embeddings_l2 = float(dropout), float(embeddings_l2)
        self.numeric = numeric
        self.embedding = FeatureEmbedding(self.feature_set, self.features, dim=self.dim,
                                          numeric=numeric, sequence="mean",
                                          embeddings_l2=self.embeddings_l2, fused=True,
                                          name="embedding")
        self.cross = CrossNetwork(self.cross_layers, projection_dim=self.projection_dim,
                                  num_experts=self.num_experts, compute_dtype=compute_dtype,
                                  name="cross")
        self.dnn = MLP(self.dnn_units, dropout=self.dropout, compute_dtype=compute_dtype,
                       name="dnn")
        self.compute_dtype_ = self.dnn.compute_dtype_
        self.logit_layer = keras.layers.Dense(1, name="logit")

    def logit(self, inputs, training=None):
        x0 = self.embedding.flat(inputs)                                # [b, d]
        if self.structure == "stacked":
            h = self.dnn(self.cross(x0), training=training)
        else:
            h = tf.concat([self.cross(x0), self.dnn(x0, training=training)], axis=1)
        return self.logit_layer(h)

    def get_config(self):
        config = super().get_config()
        config.update({"dim": self.dim, "cross_layers": self.cross_layers,
                       "projection_dim": self.projection_dim, "num_experts": self.num_experts,
                       "structure": self.structure, "dnn_units": self.dnn_units,
                       "dropout": self.dropout, "embeddings_l2": self.embeddings_l2,
                       "compute_dtype": self.compute_dtype_, "numeric": self.numeric})
        return config
