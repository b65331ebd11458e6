"""MLP: a stack of dense layers, the "deep" part of every ranking model.

``h_0 = x``, ``h_{l+1} = dropout(act(BN(W_l h_l + b_l)))`` for each entry of ``units``; the
last hidden layer is the output (no final projection: models add their own logit layer).

Args:
  units: hidden sizes, e.g. ``(256, 128)``.
  activation: Keras activation name (default ``"relu"``).
  dropout: dropout rate after each hidden layer (default 0).
  batch_norm: batch normalisation before the activation (default False).
  l2: L2 penalty on the kernels (default 0).

Inputs: ``[batch, d]``. Outputs: ``[batch, units[-1]]`` (the input itself if ``units`` is empty).

Example::

    MLP((64, 32), dropout=0.1)(tf.ones([4, 10]))   # -> [4, 32]
"""
from recsys_tf.backend import keras


class MLP(keras.layers.Layer):
    def __init__(self, units=(256, 128), activation="relu", dropout=0.0, batch_norm=False,
                 l2=0.0, **kwargs):
        super().__init__(**kwargs)
        self.units = [int(u) for u in units]
        if any(u < 1 for u in self.units):
            raise ValueError(f"MLP units={units}, expected positive sizes")
        self.activation = activation
        self.dropout = float(dropout)
        self.batch_norm = bool(batch_norm)
        self.l2 = float(l2)

    def build(self, input_shape):
        reg = keras.regularizers.l2(self.l2) if self.l2 else None
        self.dense = [keras.layers.Dense(u, use_bias=not self.batch_norm, kernel_regularizer=reg,
                                         name=f"dense_{i}") for i, u in enumerate(self.units)]
        self.norms = [keras.layers.BatchNormalization(name=f"bn_{i}") if self.batch_norm else None
                      for i in range(len(self.units))]
        self.act = keras.layers.Activation(self.activation)
        self.drop = keras.layers.Dropout(self.dropout) if self.dropout else None
        super().build(input_shape)

    def call(self, x, training=None):
        for dense, norm in zip(self.dense, self.norms):
            x = dense(x)
            if norm is not None:
                x = norm(x, training=training)
            x = self.act(x)
            if self.drop is not None:
                x = self.drop(x, training=training)
        return x

    def get_config(self):
        config = super().get_config()
        config.update({"units": self.units, "activation": self.activation, "dropout": self.dropout,
                       "batch_norm": self.batch_norm, "l2": self.l2})
        return config
