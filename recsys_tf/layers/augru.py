"""AUGRUCell: a GRU whose update is steered by an attention score (DIEN's interest evolution).

The standard GRU (DIEN eqs. 1-3, reset applied after the recurrent product)::

    u_t  = sigmoid(W_u i_t + U_u h_{t-1} + b_u)             # update gate
    r_t  = sigmoid(W_r i_t + U_r h_{t-1} + b_r)             # reset gate
    h~_t = tanh(W_h i_t + r_t * (U_h h_{t-1}) + b_h)        # candidate
    h_t  = (1 - u_t) * h_{t-1} + u_t * h~_t

and the three ways DIEN lets the attention score ``a_t`` of step ``t`` drive it (``mode``):

* ``"augru"`` (eq. 7-8): ``u'_t = a_t * u_t``;  ``h_t = (1 - u'_t) * h_{t-1} + u'_t * h~_t``
* ``"agru"``  (eq. 6):   ``h_t = (1 - a_t) * h_{t-1} + a_t * h~_t`` (no update gate)
* ``"aigru"`` (eq. 5):   a plain GRU on the scaled input ``i'_t = a_t * i_t``

The score travels with the input: each step's input is ``[i_t, a_t]``, the score in the last
column, so the cell fits ``keras.layers.RNN`` and its masking (a masked step keeps the state).

``AUGRUCell.sequence`` and :func:`keras_gru_sequence` run the same recurrences over a whole
padded sequence much faster than ``keras.layers.RNN``: the input products ``W i_t`` of all steps
are one matrix product, the time loop is unrolled (the sequence length must be static) and the
backward pass is written by hand (:func:`recurrence`: about twenty small ops per step instead
of the several dozen automatic differentiation of the loop emits, and no while loop). The
values and gradients are those of the ``keras.layers.RNN`` / ``keras.layers.GRU`` path (tests
compare them).

Args:
  units: hidden size.
  mode: ``"augru"`` (default), ``"agru"`` or ``"aigru"``.
  kernel_initializer, recurrent_initializer, bias_initializer: initialisers of ``W``, ``U``
    and ``b`` (defaults ``"glorot_uniform"``, ``"orthogonal"``, ``"zeros"``).

Weights: ``kernel [d, k * units]``, ``recurrent_kernel [units, k * units]`` and ``bias``, their
columns the blocks ``[u | r | h]`` (``[r | h]`` for AGRU, ``k = 2``).

Inputs: ``[batch, d + 1]`` per step (``[batch, time, d + 1]`` through ``RNN``). Outputs and
state: ``[batch, units]``.

Example::

    rnn = keras.layers.RNN(AUGRUCell(8), return_sequences=False)
    h_T = rnn(tf.concat([h, a[..., None]], -1), mask=mask)      # [batch, 8]
    cell = rnn.cell
    h_T = cell.sequence(h, a, mask, return_sequences=False)     # the same, fused

Reference: Zhou et al., "Deep Interest Evolution Network for Click-Through Rate Prediction",
AAAI 2019, section 4.3.
"""
from collections import namedtuple

from recsys_tf.backend import keras, tf

MODES = ("augru", "agru", "aigru")


class AUGRUCell(keras.layers.Layer):
    def __init__(self, units, mode="augru", kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}, expected one of {MODES}")
        self.units = int(units)
        self.mode = mode
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        # AGRU has no update gate: only the reset gate and the candidate have weights.
        self.gates = ("r", "h") if mode == "agru" else ("u", "r", "h")

    @property
    def state_size(self):
        return self.units

    @property
    def output_size(self):
        return self.units

    def build(self, input_shape):
        d = int(input_shape[-1]) - 1  # the last column is the attention score
        if d < 1:
            raise ValueError(f"AUGRUCell input needs [features..., score]; got last dim {d + 1}")
        n = len(self.gates) * self.units
        self.kernel = self.add_weight(name="kernel", shape=(d, n),
                                      initializer=self.kernel_initializer)
        self.recurrent_kernel = self.add_weight(name="recurrent_kernel", shape=(self.units, n),
                                                initializer=self.recurrent_initializer)
        self.bias = self.add_weight(name="bias", shape=(n,), initializer=self.bias_initializer)
        super().build(input_shape)

    def call(self, inputs, states):
        h = states[0] if isinstance(states, (list, tuple)) else states
        i, a = inputs[:, :-1], inputs[:, -1:]
        if self.mode == "aigru":
            i = a * i
        x = dict(zip(self.gates, tf.split(tf.matmul(i, self.kernel) + self.bias, len(self.gates), -1)))
        r = dict(zip(self.gates, tf.split(tf.matmul(h, self.recurrent_kernel), len(self.gates), -1)))
        reset = tf.sigmoid(x["r"] + r["r"])
        candidate = tf.tanh(x["h"] + reset * r["h"])
        if self.mode == "agru":
            update = a
        else:
            update = tf.sigmoid(x["u"] + r["u"])
            if self.mode == "augru":
                update = a * update
        h_new = (1.0 - update) * h + update * candidate
        return h_new, [h_new]

    @tf.autograph.experimental.do_not_convert
    def sequence(self, inputs, scores, mask=None, return_sequences=True, max_len=None):
        """All states ``[b, L, units]`` for inputs ``[b, L, d]``, scores ``[b, L]`` and mask
        ``[b, L]`` (None: all real), as ``keras.layers.RNN(self, return_sequences=True)`` gives
        for ``concat([inputs, scores[..., None]], -1)``, computed by :func:`recurrence`; only
        the last state ``[b, units]`` with ``return_sequences=False`` (a masked step keeps the
        state, so it is the state after the last real step). ``max_len``: a static bound on
        ``L`` when ``L`` is not static (see :func:`recurrence`'s ``steps``)."""
        if not self.built:
            self.build((None, int(inputs.shape[-1]) + 1))
        scores = tf.cast(scores, inputs.dtype)
        real = tf.ones_like(scores) if mask is None else tf.cast(mask, inputs.dtype)
        projected = time_dense(inputs, self.kernel)
        if self.mode == "aigru":                  # (a_t i_t) W = a_t (i_t W): scale the product
            projected, weight = projected * scores[..., None], real
        else:
            weight = real * scores
        return recurrence(projected + self.bias, weight, self.recurrent_kernel,
                          gated=self.mode != "agru", return_sequences=return_sequences,
                          extent=None if mask is None else extent_of(mask), steps=max_len)

    def get_config(self):
        config = super().get_config()
        config.update({
            "units": self.units, "mode": self.mode,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "recurrent_initializer": keras.initializers.serialize(self.recurrent_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer)})
        return config


@tf.autograph.experimental.do_not_convert
def keras_gru_sequence(layer, inputs, mask=None, max_len=None):
    """All states ``[b, L, units]`` of a ``keras.layers.GRU`` (``reset_after=True``, tanh and
    sigmoid, no dropout) over ``inputs [b, L, d]``, as ``layer(inputs, mask=mask)`` with
    ``return_sequences=True`` gives (a masked step repeats the previous state), computed by
    :func:`recurrence` with the layer's own weights (``max_len``: as in
    :meth:`AUGRUCell.sequence`)."""
    cell = layer.cell
    name = lambda fn: getattr(fn, "__name__", None)  # noqa: E731
    if (not cell.reset_after or name(cell.activation) != "tanh" or cell.dropout
            or name(cell.recurrent_activation) != "sigmoid" or cell.recurrent_dropout
            or not cell.use_bias):
        raise ValueError("keras_gru_sequence needs a GRU with reset_after=True, tanh, sigmoid "
                         "and no dropout")
    if not layer.built:
        layer.build((None, max_len or inputs.shape[1], inputs.shape[-1]))
    units = cell.units
    input_bias, recurrent_bias = tf.unstack(cell.bias)
    # Keras's gates are [z | r | h] with h_t = z h_{t-1} + (1 - z) h~_t: z keeps the state, so
    # the update is 1 - z = sigmoid(-(pre-activation of z)); negating z's columns turns it
    # into the update gate the recurrence expects. The recurrent biases of z and r add to the
    # input biases; the candidate's is multiplied by the reset gate and stays inside.
    sign = tf.concat([-tf.ones([units], inputs.dtype), tf.ones([2 * units], inputs.dtype)], 0)
    bias = sign * (input_bias + tf.concat([recurrent_bias[:2 * units],
                                           tf.zeros([units], inputs.dtype)], 0))
    projected = time_dense(inputs, cell.kernel * sign) + bias
    real = tf.ones_like(inputs[..., 0]) if mask is None else tf.cast(mask, inputs.dtype)
    return recurrence(projected, real, cell.recurrent_kernel * sign,
                      candidate_bias=recurrent_bias[2 * units:],
                      extent=None if mask is None else extent_of(mask), steps=max_len)


def time_dense(x, kernel):
    """``x [b, L, d] @ kernel [d, k]`` -> ``[b, L, k]`` as one 2-D matrix product."""
    d, k = int(kernel.shape[0]), int(kernel.shape[1])
    shape = tf.concat([tf.shape(x)[:-1], [k]], 0)
    return tf.reshape(tf.matmul(tf.reshape(x, [-1, d]), kernel), shape)


@tf.autograph.experimental.do_not_convert
def recurrence(projected, weight, recurrent_kernel, candidate_bias=None, gated=True,
               return_sequences=True, extent=None, block=2, steps=None):
    """The GRU-family recurrence over precomputed input products, with a hand-written gradient.

    With ``a_t = projected[:, t]`` split into blocks ``[g | r | c]`` (``[r | c]`` when not
    ``gated``), ``m = h_{t-1} U`` split the same way and ``w_t = weight[:, t]``::

        r   = sigmoid(a_r + m_r)
        h~  = tanh(a_c + r * (m_c + candidate_bias))
        u   = w_t * sigmoid(a_g + m_g)      (gated)   |   w_t   (not gated: AGRU)
        h_t = h_{t-1} + u * (h~ - h_{t-1})  (= (1 - u) h_{t-1} + u h~),   h_0 = 0

    ``w_t`` is the padding mask times the attention score (AUGRU, AGRU) or the mask alone: a
    step with ``w_t = 0`` keeps the state exactly.

    The time loop is unrolled; the backward pass is back-propagation through time written out
    (about twenty small ops per step, against the several dozen automatic differentiation of
    the same loop emits), with the products with ``U`` of a group's steps' gradients done as
    one.

    Padding is skipped: with ``extent`` (a scalar: every row's weight is 0 from step
    ``extent`` on - the batch's longest history), the steps are run in groups of ``block``
    and a group that starts at or after ``extent`` is not computed, forward or backward: its
    states repeat the last one, as computing them would. A batch of short histories then
    costs a few steps instead of ``L``. The gradient with respect to ``weight`` at the skipped
    steps is returned as 0, where the callers multiply it by a 0 mask anyway.

    Args:
      projected: ``[b, L, k * H]`` input products ``W i_t + b`` (``k`` = 3, or 2 when not
        gated); ``L`` must be static.
      weight: ``[b, L]`` update multiplier ``w_t``.
      recurrent_kernel: ``U`` ``[H, k * H]``.
      candidate_bias: ``[H]`` recurrent bias of the candidate (Keras's ``reset_after``), or None.
      gated: whether there is an update gate block ``g``.
      return_sequences: return every state (default) or only ``h_L``.
      extent: int32 scalar tensor (or None: run every step), see above; :func:`extent_of`
        computes it from a mask.
      block: steps per group when skipping (default 2).
      steps: a static bound on ``L`` for a ``projected`` whose ``L`` is not static (a batch
        cut after its longest history): the recurrence is unrolled over ``steps`` and the
        steps past ``L`` are skipped as padding. Default: ``L``, which must then be static.

    Returns:
      ``[b, L, H]``: ``h_1 .. h_L``; ``[b, H]``: ``h_L`` when not ``return_sequences``.
    """
    length = projected.shape[1]
    if length is None:
        if steps is None:
            raise ValueError("recurrence needs a static sequence length or `steps`")
        length = tf.shape(projected)[1]
        pad = [[0, 0], [0, int(steps) - length]]
        projected = tf.pad(projected, pad + [[0, 0]])
        projected.set_shape([None, int(steps), projected.shape[-1]])
        weight = tf.pad(tf.cast(weight, projected.dtype), pad)
        extent = length if extent is None else tf.minimum(tf.cast(extent, tf.int32), length)
        states = recurrence(projected, weight, recurrent_kernel, candidate_bias, gated,
                            return_sequences, extent, block)
        if not return_sequences:
            return states
        out = tf.slice(states, [0, 0, 0], tf.stack([-1, length, -1]))   # gradient: one pad
        out.set_shape([states.shape[0], None, states.shape[2]])
        return out
    steps = int(length)
    dtype = projected.dtype
    recurrent_kernel = tf.convert_to_tensor(recurrent_kernel, dtype)
    units = int(recurrent_kernel.shape[0])
    config = _Config(steps, units, (2 if gated else 1) * units, bool(gated),
                     bool(return_sequences), max(1, int(block)))
    weight = tf.cast(weight, dtype)
    extent = None if extent is None else tf.cast(extent, tf.int32)
    if candidate_bias is None:
        @tf.custom_gradient
        def run(projected, weight, kernel):
            states, saved = _forward(projected, weight, kernel, None, extent, config)
            return states, lambda d: _backward(d, weight, kernel, saved, False, extent, config)

        return run(projected, weight, recurrent_kernel)

    @tf.custom_gradient
    def run_with_bias(projected, weight, kernel, candidate_bias):
        states, saved = _forward(projected, weight, kernel, candidate_bias, extent, config)
        return states, lambda d: _backward(d, weight, kernel, saved, True, extent, config)

    return run_with_bias(projected, weight, recurrent_kernel,
                         tf.convert_to_tensor(candidate_bias, dtype))


def extent_of(mask):
    """int32 scalar: the position of the last real step of any row of ``mask [b, L]`` + 1
    (0 when there is none)."""
    steps = tf.range(1, tf.shape(mask)[1] + 1)
    return tf.reduce_max(tf.where(tf.cast(mask, tf.bool), steps, tf.zeros_like(steps)))


class _Config(namedtuple("_Config", "steps units gate_width gated sequences block")):
    """The static shape of one recurrence."""
    __slots__ = ()

    def groups(self):
        """``[(first step, [its steps])]``: the groups of ``block`` steps."""
        return [(t0, list(range(t0, min(t0 + self.block, self.steps))))
                for t0 in range(0, self.steps, self.block)]


# the per-step values the forward pass keeps for the backward pass (g is absent for AGRU)
_SAVED = ("h", "s", "g", "r", "c", "m_c", "u", "diff")


def _forward(projected, weight, kernel, candidate_bias, extent, cfg):
    """``(states [b, L, H] or h_L, per-step values the backward pass reuses)``."""
    units, gate_width = cfg.units, cfg.gate_width
    a_s, a_c = tf.split(projected, [gate_width, units], axis=-1)
    a_s, a_c = tf.unstack(a_s, cfg.steps, axis=1), tf.unstack(a_c, cfg.steps, axis=1)
    w = tf.unstack(weight[..., None], cfg.steps, axis=1)                        # [b, 1] each
    h = tf.zeros_like(projected[:, 0, :units])
    names = tuple(n for n in _SAVED if cfg.gated or n != "g")
    saved, states = [], []
    for first, group in cfg.groups():
        hs, values = _group(_FORWARD, extent, first, h, [a_s[t] for t in group],
                            [a_c[t] for t in group], [w[t] for t in group], kernel,
                            candidate_bias, units, gate_width, names)
        states += hs
        saved += [dict(zip(names, v)) for v in values]
        h = hs[-1]
    return (tf.stack(states, axis=1) if cfg.sequences else h), saved


def _forward_steps(h, a_s, a_c, w, kernel, candidate_bias, units, gate_width, names):
    """The recurrence over one group of steps (``a_s``, ``a_c``, ``w``: the group's steps)
    from state ``h``: the states after each step and, per step, the values ``names`` the
    backward pass reuses."""
    gated = "g" in names
    values, hs = [], []
    for a_s_t, a_c_t, w_t in zip(a_s, a_c, w):
        m_s, m_c = tf.split(tf.matmul(h, kernel), [gate_width, units], axis=-1)
        s = tf.sigmoid(a_s_t + m_s)
        if gated:
            g, r = tf.split(s, 2, axis=-1)
            u = w_t * g
        else:
            r, g, u = s, None, w_t
        if candidate_bias is not None:
            m_c = m_c + candidate_bias
        c = tf.tanh(a_c_t + r * m_c)
        diff = c - h
        step = dict(h=h, s=s, g=g, r=r, c=c, m_c=m_c, u=u, diff=diff)
        values.append([step[n] for n in names])
        h = h + u * diff
        hs.append(h)
    return hs, values


def _forward_skipped(h, a_s, a_c, w, kernel, candidate_bias, units, gate_width, names):
    """:func:`_forward_steps` of a group wholly in the padding: the state stays, the saved
    values are zeros."""
    zero = tf.zeros_like(h)
    like = dict(s=tf.zeros_like(a_s[0]), u=zero if "g" in names else tf.zeros_like(w[0]))
    return [h] * len(a_s), [[like.get(n, zero) for n in names] for _ in a_s]


def _backward(d_states, weight, kernel, saved, with_bias, extent, cfg):
    """Gradients of ``sum(d_states * states)`` w.r.t. projected, weight, kernel (and the
    candidate bias), by back-propagation through time over the saved forward values."""
    steps, gate_width, gated = cfg.steps, cfg.gate_width, cfg.gated
    if cfg.sequences:
        d_out = tf.unstack(d_states, steps, axis=1)
        carry = tf.zeros_like(d_out[0])                                      # dL/dh_t from t+1
    else:                                                                    # only h_L is used
        d_out, carry = [None] * steps, d_states
    w = tf.unstack(weight[..., None], steps, axis=1)
    d_a_s, d_a_c, d_w = [None] * steps, [None] * steps, [None] * steps
    d_kernel, d_bias = [], []
    for first, group in reversed(cfg.groups()):
        carry, grads, sums = _group(_BACKWARD, extent, first, carry,
                                    [d_out[t] for t in group], [saved[t] for t in group],
                                    [w[t] for t in group], kernel, with_bias, gate_width, gated)
        for t, (das, dpc, dw) in zip(group, grads):
            d_a_s[t], d_a_c[t], d_w[t] = das, dpc, dw
        d_kernel.append(sums[0])
        if with_bias:
            d_bias.append(sums[1])
    d_projected = tf.concat([tf.stack(d_a_s, axis=1), tf.stack(d_a_c, axis=1)], axis=-1)
    grads = [d_projected, tf.stack(d_w, axis=1), tf.add_n(d_kernel)]
    if with_bias:
        grads.append(tf.add_n(d_bias))
    return grads


def _backward_steps(carry, d_out, saved, w, kernel, with_bias, gate_width, gated):
    """Back-propagation through one group of steps (``d_out``, ``saved``, ``w``: the group's
    steps in time order), last step first, from ``carry`` = dL/dh of the group's last state:
    ``(dL/dh before the group, per step (d pre-sigmoid, d pre-tanh, d w), [d U (, d bias)])``."""
    out, d_m = [None] * len(saved), [None] * len(saved)
    for i in reversed(range(len(saved))):
        v = saved[i]
        dh = carry if d_out[i] is None else d_out[i] + carry
        d_c = dh * v["u"]                          # h_t = h_{t-1} + u (h~ - h_{t-1})
        d_u = dh * v["diff"]
        d_pre_c = d_c * (1.0 - v["c"] * v["c"])    # through tanh
        d_r = d_pre_c * v["m_c"]
        if gated:
            dw = tf.reduce_sum(d_u * v["g"], axis=-1)
            d_s = tf.concat([d_u * w[i], d_r], axis=-1)
        else:
            dw = tf.reduce_sum(d_u, axis=-1)
            d_s = d_r
        das = d_s * (v["s"] * (1.0 - v["s"]))      # through the sigmoids
        d_m[i] = tf.concat([das, d_pre_c * v["r"]], axis=-1)  # w.r.t. h_{t-1} U (+ b)
        out[i] = (das, d_pre_c, dw)
        carry = dh - d_c + tf.matmul(d_m[i], kernel, transpose_b=True)
    # the products with U of the group's steps at once: sum_t h_{t-1}^T d_m
    h_prev = tf.concat([v["h"] for v in saved], axis=0)                 # [n * b, H]
    d_ms = tf.concat(d_m, axis=0)                                        # [n * b, kH]
    sums = [tf.matmul(h_prev, d_ms, transpose_a=True)]
    if with_bias:
        sums.append(tf.reduce_sum(d_ms[:, gate_width:], axis=0))
    return carry, out, sums


def _backward_skipped(carry, d_out, saved, w, kernel, with_bias, gate_width, gated):
    """:func:`_backward_steps` of a group wholly in the padding: padded steps keep the state,
    so dL/dh passes through unchanged (plus any ``d_out``); every other gradient is 0."""
    for d in reversed(d_out):
        if d is not None:
            carry = carry + d
    v = saved[0]
    sums = [tf.zeros_like(kernel)]
    if with_bias:
        sums.append(tf.zeros_like(kernel[0, gate_width:]))
    return carry, [(tf.zeros_like(v["s"]), tf.zeros_like(v["c"]), tf.zeros_like(w[0][:, 0]))
                   for _ in saved], sums


def _conditional(run, skip):
    """``group(extent, first, *args)``: ``run(*args)``, or ``skip(*args)`` when the group
    starting at step ``first`` lies wholly in the padding (``extent <= first``)."""
    def group(extent, first, *args):
        return tf.cond(extent > first, lambda: run(*args), lambda: skip(*args))

    group.run = run
    return group


_FORWARD = _conditional(_forward_steps, _forward_skipped)
_BACKWARD = _conditional(_backward_steps, _backward_skipped)
_TRACED = {}


def _group(conditional, extent, first, *args):
    """One group of steps of the forward or backward pass (``conditional``: ``_FORWARD`` or
    ``_BACKWARD``). The first group always runs (its cost is what a condition would save),
    as does every group when there is no ``extent``. While a graph is being built the others
    call one ``tf.function`` of ``conditional``, traced once per signature, with ``first`` as
    a tensor: a recurrence then adds a call per group instead of a condition and a copy of
    the group's ops each, which takes seconds off building a DIEN training graph (the calls
    are inlined when the graph is optimised, so the same kernels run)."""
    if first == 0 or extent is None:
        return conditional.run(*args)
    if tf.executing_eagerly():
        return conditional(extent, first, *args)
    fn = _TRACED.get(conditional)
    if fn is None:
        fn = _TRACED[conditional] = tf.function(conditional, autograph=False,
                                                reduce_retracing=True)
    return fn(extent, tf.constant(first, tf.int32), *args)
