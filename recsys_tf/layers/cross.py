"""Cross network of DCN-v2: explicit, bounded-degree feature crosses.

Each cross layer keeps the input ``x_0`` and updates

    x_{l+1} = x_0 o (W_l x_l + b_l) + x_l                       (full rank, W_l is d x d)
    x_{l+1} = x_0 o (U_l (V_l^T x_l) + b_l) + x_l               (low rank r = projection_dim)

(``o`` the Hadamard product), so ``l`` layers hold every feature cross up to degree ``l + 1``.
The full- and low-rank layers are TensorFlow Recommenders' ``tfrs.layers.dcn.Cross``.

With ``num_experts > 1`` each layer is a mixture of low-rank experts (:class:`CrossMoE`):

    E_i(x_l) = x_0 o (U_i g(C_i g(V_i^T x_l)) + b_l)
    x_{l+1} = sum_i G_i(x_l) E_i(x_l) + x_l,    G(x_l) = softmax(W_g x_l)

with ``U_i, V_i`` of size ``d x r``, ``C_i`` of size ``r x r``, ``g`` a nonlinearity
(``expert_activation``, default tanh) and a linear gating network with a softmax over experts.

Args (CrossNetwork):
  num_layers: number of cross layers (default 3).
  projection_dim: None for full-rank ``W_l`` (default), or the rank ``r`` of the low-rank
    ``U_l V_l^T`` (the paper finds ``r = d / 4`` keeps full-rank accuracy). Required when
    ``num_experts > 1``.
  num_experts: 1 (default) for plain cross layers; more for a mixture of low-rank experts.
  use_bias: add ``b_l`` (default True).
  l2: L2 penalty on the cross kernels (default 0).
  diag_scale: adds ``diag_scale * I`` to ``W_l`` (TFRS option for stability; default 0, not
    available with experts).
  expert_activation: ``g`` of the experts (default ``"tanh"``).
  kernel_initializer, bias_initializer: initialisers (default ``"truncated_normal"``,
    ``"zeros"``).
  compute_dtype: ``"float32"`` (default), ``"bfloat16"`` (the cross layers' matmuls in
    bfloat16, weights and the residual sums float32; not with experts) or ``"auto"`` (see
    :func:`recsys_tf.layers.mlp.resolve_compute_dtype`).

Inputs: ``[batch, d]``. Outputs: ``[batch, d]``.

Example::

    CrossNetwork(num_layers=2, projection_dim=4)(tf.ones([8, 16]))   # -> [8, 16]

Reference: Wang et al., "DCN V2: Improved Deep & Cross Network and Practical Lessons for
Web-scale Learning to Rank Systems", WWW 2021 (Eq. 1 cross layer, Eq. 2-3 mixture of
low-rank experts).
"""
from recsys_tf.backend import keras, tf
from recsys_tf.layers.mlp import resolve_compute_dtype

import tensorflow_recommenders as tfrs  # after backend: TFRS needs TF_USE_LEGACY_KERAS set


def _clone(initializer):
    initializer = keras.initializers.get(initializer)
    return initializer.__class__.from_config(initializer.get_config())


class CrossMoE(keras.layers.Layer):
    """One cross layer made of ``num_experts`` low-rank experts mixed by a softmax gate.

    Args:
      projection_dim: rank ``r`` of each expert.
      num_experts: number of experts ``K`` (default 4).
      use_bias: add the shared bias ``b_l`` (default True).
      activation: the experts' nonlinearity ``g`` (default ``"tanh"``).
      kernel_initializer, bias_initializer: initialisers of ``U, V, C, W_g`` and of ``b``.
      l2: L2 penalty on ``U, V, C`` (default 0).

    Call: ``layer(x0, x)`` with ``x0, x [batch, d]`` (``x`` defaults to ``x0``) -> ``[batch, d]``.
    """

    def __init__(self, projection_dim, num_experts=4, use_bias=True, activation="tanh",
                 kernel_initializer="truncated_normal", bias_initializer="zeros", l2=0.0,
                 **kwargs):
        super().__init__(**kwargs)
        self.projection_dim = int(projection_dim)
        self.num_experts = int(num_experts)
        if self.projection_dim < 1 or self.num_experts < 1:
            raise ValueError(f"CrossMoE: projection_dim={projection_dim} and "
                             f"num_experts={num_experts} must be positive")
        self.use_bias = bool(use_bias)
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.l2 = float(l2)

    def build(self, input_shape):
        d, r, k = int(input_shape[-1]), self.projection_dim, self.num_experts
        reg = keras.regularizers.l2(self.l2) if self.l2 else None

        def kernel(name, shape, regularizer=reg):
            return self.add_weight(name=name, shape=shape, regularizer=regularizer,
                                   initializer=_clone(self.kernel_initializer), trainable=True)

        self.v = kernel("v", (k, d, r))
        self.c = kernel("c", (k, r, r))
        self.u = kernel("u", (k, d, r))
        self.gate = kernel("gate", (d, k), regularizer=None)
        self.bias = (self.add_weight(name="bias", shape=(d,), trainable=True,
                                     initializer=_clone(self.bias_initializer))
                     if self.use_bias else None)
        super().build(input_shape)

    def call(self, x0, x=None):
        x = x0 if x is None else x
        g = self.activation
        h = g(tf.einsum("bd,kdr->bkr", x, self.v))           # V_i^T x_l       [b, K, r]
        h = g(tf.einsum("bkr,kqr->bkq", h, self.c))          # C_i (.)         [b, K, r]
        h = tf.einsum("bkr,kdr->bkd", h, self.u)             # U_i (.)         [b, K, d]
        gates = tf.nn.softmax(tf.matmul(x, self.gate), axis=-1)
        # sum_i G_i x0 o (h_i + b) = x0 o (sum_i G_i h_i + b) because the gates sum to 1
        mixed = tf.einsum("bk,bkd->bd", gates, h)
        if self.bias is not None:
            mixed = mixed + self.bias
        return x0 * mixed + x

    def get_config(self):
        config = super().get_config()
        config.update({
            "projection_dim": self.projection_dim, "num_experts": self.num_experts,
            "use_bias": self.use_bias, "activation": keras.activations.serialize(self.activation),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "l2": self.l2})
        return config


class CrossNetwork(keras.layers.Layer):
    def __init__(self, num_layers=3, projection_dim=None, num_experts=1, use_bias=True, l2=0.0,
                 diag_scale=0.0, expert_activation="tanh", kernel_initializer="truncated_normal",
                 bias_initializer="zeros", compute_dtype="float32", **kwargs):
        super().__init__(**kwargs)
        self.compute_dtype_ = resolve_compute_dtype(compute_dtype)
        self.num_layers = int(num_layers)
        self.projection_dim = None if projection_dim is None else int(projection_dim)
        self.num_experts = int(num_experts)
        if self.num_layers < 1:
            raise ValueError(f"CrossNetwork num_layers={num_layers}, expected >= 1")
        if self.num_experts < 1:
            raise ValueError(f"CrossNetwork num_experts={num_experts}, expected >= 1")
        if self.num_experts > 1 and self.projection_dim is None:
            raise ValueError("CrossNetwork num_experts > 1 mixes low-rank experts: set "
                             "projection_dim (e.g. a quarter of the input size)")
        if self.num_experts > 1 and diag_scale:
            raise ValueError("CrossNetwork diag_scale is not available with num_experts > 1")
        self.use_bias = bool(use_bias)
        self.l2 = float(l2)
        self.diag_scale = float(diag_scale)
        self.expert_activation = keras.activations.get(expert_activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

        reg = keras.regularizers.l2(self.l2) if self.l2 else None
        if self.num_experts == 1:
            self.cross = [tfrs.layers.dcn.Cross(
                projection_dim=self.projection_dim, diag_scale=self.diag_scale,
                use_bias=self.use_bias, kernel_initializer=_clone(self.kernel_initializer),
                bias_initializer=_clone(self.bias_initializer), kernel_regularizer=reg,
                name=f"cross_{i}") for i in range(self.num_layers)]
        else:
            self.cross = [CrossMoE(
                self.projection_dim, self.num_experts, use_bias=self.use_bias,
                activation=self.expert_activation,
                kernel_initializer=_clone(self.kernel_initializer),
                bias_initializer=_clone(self.bias_initializer), l2=self.l2, name=f"cross_moe_{i}")
                for i in range(self.num_layers)]

    def call(self, x0):
        if self.compute_dtype_ == "bfloat16" and self.num_experts == 1:
            return self._call_bfloat16(x0)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return x

    def _call_bfloat16(self, x0):
        """The TFRS cross layers' math with their own weights, matmuls in bfloat16:
        ``x_{l+1} = x0 * (W_l x_l + b_l [+ diag_scale x_l]) + x_l``."""
        def dense(layer, h):
            if not layer.built:
                layer.build(h.shape)
            out = tf.matmul(tf.cast(h, tf.bfloat16), tf.cast(layer.kernel, tf.bfloat16))
            if layer.use_bias:
                out = out + tf.cast(layer.bias, tf.bfloat16)
            return out

        x = x0
        for layer in self.cross:
            if not layer.built:
                layer.build(x0.shape)
            if self.projection_dim is None:
                prod = dense(layer._dense, x)
            else:
                prod = dense(layer._dense_v, dense(layer._dense_u, x))
            prod = tf.cast(prod, tf.float32)
            if self.diag_scale:
                prod = prod + self.diag_scale * x
            x = x0 * prod + x
        return x

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_layers": self.num_layers, "projection_dim": self.projection_dim,
            "num_experts": self.num_experts, "use_bias": self.use_bias, "l2": self.l2,
            "diag_scale": self.diag_scale,
            "expert_activation": keras.activations.serialize(self.expert_activation),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "compute_dtype": self.compute_dtype_})
        return config
