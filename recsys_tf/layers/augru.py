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

Reference: Zhou et al., "Deep Interest Evolution Network for Click-Through Rate Prediction",
AAAI 2019, section 4.3.
"""
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

    def get_config(self):
        config = super().get_config()
        config.update({
            "units": self.units, "mode": self.mode,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "recurrent_initializer": keras.initializers.serialize(self.recurrent_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer)})
        return config
