"""MLP: a stack of dense layers, the "deep" part of every ranking model.

``h_0 = x``, ``h_{l+1} = dropout(act(BN(W_l h_l + b_l)))`` for each entry of ``units``; the
last hidden layer is the output (no final projection: models add their own logit layer).

Args:
  units: hidden sizes, e.g. ``(256, 128)``.
  activation: Keras activation name (default ``"relu"``).
  dropout: dropout rate after each hidden layer (default 0).
  batch_norm: batch normalisation before the activation (default False).
  l2: L2 penalty on the kernels (default 0).
  compute_dtype: ``"float32"`` (default), ``"bfloat16"`` (the matmuls run in bfloat16 with
    float32 weights and a float32 output: mixed precision, faster on CPUs with AMX or
    AVX512-BF16) or ``"auto"`` (bfloat16 where this CPU has such units, else float32; resolved
    when the layer is made and kept in its config).

Inputs: ``[batch, d]``. Outputs: ``[batch, units[-1]]`` (the input itself if ``units`` is empty).

Example::

    MLP((64, 32), dropout=0.1)(tf.ones([4, 10]))   # -> [4, 32]
"""
import functools

from recsys_tf.backend import keras, tf

COMPUTE_DTYPES = ("float32", "bfloat16", "auto")


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bfloat16() -> bool:
    """True when this machine's CPU has bfloat16 matrix units (AMX-BF16 or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_compute_dtype(compute_dtype: str) -> str:
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype={compute_dtype!r}, expected one of {COMPUTE_DTYPES}")
    if compute_dtype == "auto":
        return "bfloat16" if cpu_has_fast_bfloat16() else "float32"
    return compute_dtype


class MLP(keras.layers.Layer):
    def __init__(self, units=(256, 128), activation="relu", dropout=0.0, batch_norm=False,
                 l2=0.0, compute_dtype="float32", **kwargs):
        super().__init__(**kwargs)
        self.compute_dtype_ = resolve_compute_dtype(compute_dtype)
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
        if self.compute_dtype_ == "bfloat16" and self.dense:
            return self._call_bfloat16(x, training)
        for dense, norm in zip(self.dense, self.norms):
            x = dense(x)
            if norm is not None:
                x = norm(x, training=training)
            x = self.act(x)
            if self.drop is not None:
                x = self.drop(x, training=training)
        return x

    def _call_bfloat16(self, x, training=None):
        """The same layers with matmuls and activations in bfloat16 (weights stay float32;
        batch norm and dropout in float32); the output is cast back to float32."""
        act = keras.activations.get(self.activation)   # a function: no autocast to float32
        h = tf.cast(x, tf.bfloat16)
        for dense, norm in zip(self.dense, self.norms):
            if not dense.built:
                dense.build(h.shape)
            h = tf.matmul(h, tf.cast(dense.kernel, tf.bfloat16))
            if dense.use_bias:
                h = h + tf.cast(dense.bias, tf.bfloat16)
            if norm is not None:
                h = tf.cast(norm(tf.cast(h, tf.float32), training=training), tf.bfloat16)
            h = act(h)
            if self.drop is not None:
                h = tf.cast(self.drop(tf.cast(h, tf.float32), training=training), tf.bfloat16)
        return tf.cast(h, tf.float32)

    def get_config(self):
        config = super().get_config()
        config.update({"units": self.units, "activation": self.activation, "dropout": self.dropout,
                       "batch_norm": self.batch_norm, "l2": self.l2,
                       "compute_dtype": self.compute_dtype_})
        return config
