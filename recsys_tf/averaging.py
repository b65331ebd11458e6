"""Exponential moving average of a model's weights, evaluated and kept in their place.

Averaging the iterates of a stochastic optimiser (Polyak-Ruppert averaging; its exponential
form is TF's ``tf.train.ExponentialMovingAverage``) smooths out the noise of the last steps:
on MovieLens 100K the averaged weights of the CTR rankers score a higher validation AUC than
their raw weights at any epoch's end (benchmarks/README.md has the figures).
"""
from __future__ import annotations

from recsys_tf.backend import keras, tf


class WeightAveraging(keras.callbacks.Callback):
    """Keeps a bias-corrected exponential moving average of the trainable weights; at the end
    of every epoch the averages take the weights' place (so validation, early stopping and
    the trained model see them) and the raw weights come back when the next epoch starts.

    With ``m`` the momentum and ``w_t`` the weights after training step ``t``:

        A_t = m A_(t-1) + (1 - m) w_t,  A_0 = 0,        avg_t = A_t / (1 - m^t)

    i.e. ``avg_t`` is the mean of ``w_1 .. w_t`` weighted by ``m^(t-s)`` (no pull towards the
    initial weights, so a short run is averaged over the steps it had; ``t`` counts the steps
    of the current ``fit``). The callback updates
    ``avg`` every time Keras hands control back (every ``steps_per_execution`` steps): after
    ``k`` steps whose last weights are ``w``,

        avg <- avg + (1 - m^k) / (1 - m^t) * (w - avg)

    which is the formula above with the ``k`` steps' weights sampled once (with ``k = 1``,
    exactly it). The step count ``t`` is read from the optimizer.

    Args:
      momentum: ``m`` in [0, 1), per training step (default 0.99: a horizon of about 100
        steps). 0 turns averaging off (the callback does nothing).

    Example::

        model.fit(train, epochs=5, callbacks=[WeightAveraging(0.99), validation, early_stop])

    Put it before the callbacks that evaluate the model at the end of an epoch. After ``fit``
    the model holds the last epoch's averages, or what a later callback chose:
    :class:`recsys_tf.training.ValidationMetrics` given this callback scores both the averages
    and the raw weights and keeps the better, and ``EarlyStopping`` restores the best epoch's.

    Reference: Polyak & Juditsky, "Acceleration of Stochastic Approximation by Averaging",
    SIAM J. Control Optim. 30(4), 1992.
    """

    def __init__(self, momentum=0.99):
        super().__init__()
        momentum = float(momentum)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum={momentum!r}, expected a number in [0, 1)")
        self.momentum = momentum
        self._supports_tf_logs = True     # the step's logs stay tensors: no sync per call
        self._averages, self._weights = None, None
        self._swapped, self._fresh = False, True

    def _steps(self):
        optimizer = self.model.optimizer
        if isinstance(optimizer, (list, tuple)):          # Wide & Deep: [wide, deep]
            optimizer = optimizer[-1]
        return int(optimizer.iterations.numpy())

    def on_train_begin(self, logs=None):
        self._swapped, self._fresh = False, True
        if self.momentum:
            self._start = self._steps()

    def _begin(self, weights):
        """The averages' variables and the two compiled functions over them, made on the
        first call back (Keras may build the weights in the first step) and kept for later
        ``fit`` calls on the same weights."""
        self._weights = weights
        with self.model.distribute_strategy.scope():
            self._averages = [tf.Variable(w, trainable=False) for w in weights]

        @tf.function(autograph=False)
        def update(rate):
            for avg, w in zip(self._averages, weights):
                avg.assign_add(tf.cast(rate, avg.dtype) * (w - avg))

        @tf.function(autograph=False)
        def swap():
            for avg, w in zip(self._averages, weights):
                held = tf.identity(w)
                w.assign(avg)
                avg.assign(held)

        self._update, self._swap = update, swap

    def on_train_batch_end(self, batch, logs=None):
        if not self.momentum:
            return
        now = self._steps()
        if self._fresh:                      # a fit's first call back: the averages start
            weights = list(self.model.trainable_variables)        # as the weights (rate 1)
            if self._averages is None or [id(w) for w in weights] != [
                    id(w) for w in self._weights]:
                self._begin(weights)
            else:
                self._update(tf.constant(1.0, tf.float32))
            self._fresh = False
        elif now > self._last:
            m, k, t = self.momentum, now - self._last, now - self._start
            self._update(tf.constant((1.0 - m ** k) / (1.0 - m ** t), tf.float32))
        self._last = now

    def swap_in(self):
        """Puts the averages in the weights' place (the raw weights are kept); idempotent."""
        if self._averages is not None and not self._swapped and not self._fresh:
            self._swap()
            self._swapped = True

    def swap_out(self):
        """Puts the raw weights back in place; idempotent."""
        if self._averages is not None and self._swapped:
            self._swap()
            self._swapped = False

    def on_epoch_end(self, epoch, logs=None):
        self.swap_in()

    def on_epoch_begin(self, epoch, logs=None):
        self.swap_out()

    def get_config(self):
        return {"momentum": self.momentum}
