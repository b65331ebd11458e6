"""Training and evaluation: DataFrames -> tf.data -> fit, with progress and metrics.

``train_ranker`` / ``train_retrieval`` fit a model on a :class:`~recsys_tf.data.Dataset`;
``evaluate_ranker`` / ``evaluate_retrieval`` compute the metrics the command line writes.
All training runs under a ``tf.distribute`` strategy (the default one unless given).
"""
from __future__ import annotations

import os
import sys
import time
import weakref

import numpy as np

from recsys_tf import metrics as M
from recsys_tf.averaging import WeightAveraging
from recsys_tf.backend import keras, tf
from recsys_tf.layers.embedding import padding_inputs


class FusedAdam(keras.optimizers.Adam):
    """Adam whose update of each variable is one fused kernel (``ResourceApplyAdam``).

    ``m <- m + (1 - b1)(g - m)``, ``v <- v + (1 - b2)(g^2 - v)``,
    ``w <- w - alpha m / (sqrt(v) + eps)`` with ``alpha = lr sqrt(1 - b2^t) / (1 - b1^t)``:
    Keras' Adam's arithmetic, done in one pass over the variable instead of about ten
    element-wise ops (each a pass over, e.g., a whole embedding table). A sparse gradient (a
    ``tf.IndexedSlices`` from a lookup; Keras has summed the rows of repeated ids already) is
    made dense first: every row's moments decay, as in Keras' Adam, so the updates are Keras'
    Adam's (a test compares them). ``amsgrad`` falls back to Keras' Adam.
    """

    def __init__(self, learning_rate=1e-3, name="FusedAdam", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)

    def add_variable_from_reference(self, model_variable, variable_name, shape=None,
                                    initial_value=None):
        """Keras' slot variable, its zeros made where the variable is placed: Keras passes
        a zeros tensor made in this process, which under a parameter-server strategy is the
        coordinator - a whole table's worth of memory per slot - and copies it to the
        parameter server; a callable initial value runs on the parameter server."""
        if initial_value is None and model_variable.shape.rank is not None:
            dtype = getattr(model_variable, "true_dtype", model_variable.dtype)
            zeros_shape = model_variable.shape if shape is None else shape

            def initial_value():
                return tf.zeros(zeros_shape, dtype=dtype)

        return super().add_variable_from_reference(model_variable, variable_name, shape,
                                                   initial_value)

    def update_step(self, gradient, variable):
        if self.amsgrad or not hasattr(variable, "handle"):
            return super().update_step(gradient, variable)
        dtype = variable.dtype
        if isinstance(gradient, tf.IndexedSlices):
            gradient = tf.convert_to_tensor(gradient)
        step = tf.cast(self.iterations + 1, dtype)
        b1, b2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        key = self._index_dict[self._var_key(variable)]
        eps = tf.cast(self.epsilon, dtype)
        if getattr(self, "adaptive_epsilon", False):
            eps = eps * tf.sqrt(1 - tf.pow(b2, step))
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[key].handle, v=self._velocities[key].handle,
            beta1_power=tf.pow(b1, step), beta2_power=tf.pow(b2, step),
            lr=tf.cast(self.learning_rate, dtype), beta1=b1, beta2=b2, epsilon=eps,
            grad=tf.cast(gradient, dtype), use_locking=False)


class LazyAdam(FusedAdam):
    """Adam whose update of an embedding table touches only the rows a batch looked up.

    For a dense gradient it is exactly :class:`FusedAdam` (Keras' Adam). For a sparse one (the
    ``tf.IndexedSlices`` of a ``tf.gather`` from a table) only the looked-up rows get the
    Adam step - ``m_i <- b1 m_i + (1 - b1) g_i``, ``v_i <- b2 v_i + (1 - b2) g_i^2``,
    ``w_i <- w_i - alpha m_i / (sqrt(v_i) + eps)`` with the usual bias-corrected ``alpha`` -
    and rows not in the batch keep their weights and moments, as in TF-Addons' ``LazyAdam``
    and PyTorch's ``SparseAdam``. Keras' Adam instead decays every row's moments and moves
    every row on every step, which costs a pass over the whole table per step (the dominant
    cost for large vocabularies) and keeps moving rows the batch never saw.

    ``sparse_multiplier`` (default 1) scales the step of those rows: ``alpha`` above becomes
    ``sparse_multiplier * alpha`` for sparse gradients, while dense ones keep ``learning_rate``,
    so the embedding tables can learn at a higher rate than the layers on top of them
    (:func:`train_ranker` uses 3, chosen on validation AUC).
    """

    def __init__(self, learning_rate=1e-3, sparse_multiplier=1.0, name="LazyAdam", **kwargs):
        if kwargs.get("amsgrad"):
            raise ValueError("LazyAdam does not support amsgrad")
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not float(sparse_multiplier) > 0:
            raise ValueError(f"sparse_multiplier={sparse_multiplier!r}, expected a number > 0")
        self.sparse_multiplier = float(sparse_multiplier)

    def get_config(self):
        config = super().get_config()
        config["sparse_multiplier"] = self.sparse_multiplier
        return config

    def update_step(self, gradient, variable):
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable)
        dtype = variable.dtype
        lr = tf.cast(self.learning_rate, dtype) * self.sparse_multiplier
        step = tf.cast(self.iterations + 1, dtype)
        b1, b2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        alpha = lr * tf.sqrt(1 - tf.pow(b2, step)) / (1 - tf.pow(b1, step))
        eps = self.epsilon
        if getattr(self, "adaptive_epsilon", False):
            eps = self.epsilon * tf.sqrt(1 - tf.pow(b2, step))
        key = self._index_dict[self._var_key(variable)]
        m, v = self._momentums[key], self._velocities[key]
        idx, g = gradient.indices, gradient.values          # unique: deduplicated upstream
        m_t = b1 * tf.gather(m, idx) + (1 - b1) * g
        v_t = b2 * tf.gather(v, idx) + (1 - b2) * tf.square(g)
        m.scatter_update(tf.IndexedSlices(m_t, idx))
        v.scatter_update(tf.IndexedSlices(v_t, idx))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_t / (tf.sqrt(v_t) + eps), idx))


def _is_split(frame):
    """A lazily read split (e.g. :class:`recsys_tf.data.criteo.CriteoSplit`), not a DataFrame."""
    return hasattr(frame, "tf_dataset")


def index_batches(n, batch_size, shuffle=False, seed=0, lengths=None, window=20):
    """A dataset of ``[<= batch_size]`` int64 row indices covering ``range(n)`` once per pass.

    With ``shuffle`` every pass (every iterator: Keras makes one per epoch) draws a new
    permutation in one op - ``stateless_shuffle`` keyed by ``(seed, pass number)`` - and slices
    it into batches, so there is no per-row work in the pipeline (an element-wise
    ``Dataset.shuffle`` + ``batch`` costs more than a CTR model's training step per row).

    ``lengths`` (``[n]`` ints, with ``shuffle``): batches of rows of similar length. Each run of
    ``window * batch_size`` permuted rows is sorted by length before it is cut into batches, and
    the full batches are then shuffled, as the DIEN authors' data iterator does; a sequence
    model that runs only a batch's real steps (DIEN cuts each batch after its longest history)
    then skips most of the padding."""
    n, batch_size = int(n), int(batch_size)
    full = n // batch_size * batch_size

    def split(order):
        batches = tf.data.Dataset.from_tensor_slices(tf.reshape(order[:full], [-1, batch_size]))
        if full < n:
            batches = batches.concatenate(tf.data.Dataset.from_tensors(order[full:]))
        return batches

    if not shuffle:
        return split(tf.range(n, dtype=tf.int64))
    passes = tf.Variable(0, dtype=tf.int64, trainable=False, name="shuffle_passes")
    if lengths is not None:
        lengths = tf.constant(np.asarray(lengths, np.int64).reshape(-1))
        if int(lengths.shape[0]) != n:
            raise ValueError(f"lengths has {int(lengths.shape[0])} values for {n} rows")

    def permutation(_):
        key = tf.stack([tf.constant(int(seed), tf.int64), passes.assign_add(1)])
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=key)
        if lengths is None:
            return order
        run = tf.range(n, dtype=tf.int64) // (int(window) * batch_size)
        sort_key = run * (tf.reduce_max(lengths) + 1) + tf.gather(lengths, order)
        order = tf.gather(order, tf.argsort(sort_key, stable=True))
        batches = tf.random.experimental.stateless_shuffle(
            tf.reshape(order[:full], [-1, batch_size]), seed=key + [0, 1 << 40])
        return tf.concat([tf.reshape(batches, [-1]), order[full:]], 0)

    batches = tf.data.Dataset.from_tensors(0).map(permutation).flat_map(split)
    # a known size: Keras runs several steps per call only on data of known length
    return batches.apply(tf.data.experimental.assert_cardinality(-(-n // batch_size)))


def _batches(tensors, n, batch_size, shuffle, seed, lengths=None):
    """Batches of ``tensors`` (a structure of ``[n, ...]`` tensors) gathered by index."""
    def gather(i):
        return tf.nest.map_structure(lambda t: tf.gather(t, i), tensors)

    return index_batches(n, batch_size, shuffle, seed, lengths).map(
        gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def sequence_lengths(feature_set, x, name):
    """Per row, the extent of sequence ``name`` in the arrays ``x``: the position of its last
    real (non-padding) value + 1, 0 for an empty one."""
    real = np.asarray(x[name]) != feature_set.categorical_of(name).pad
    steps = np.arange(1, real.shape[1] + 1)
    return (real * steps).max(axis=1) if real.shape[1] else np.zeros(len(real), np.int64)


def make_dataset(feature_set, frame, features, batch_size=256, label=None, shuffle=False,
                 seed=0, sort_by_length=None):
    """A batched ``tf.data.Dataset`` of ``(features dict[, label])`` from a DataFrame.

    The columns become in-memory tensors once; batches are gathered by (shuffled) index.
    ``sort_by_length``: the name of a sequence feature; with ``shuffle``, batches hold rows of
    similar length of it (see :func:`index_batches`). ``frame`` may also be a lazily read split
    with a ``tf_dataset`` method (the streaming Criteo path), which parses its file with
    ``tf.data`` instead."""
    if _is_split(frame):
        return frame.tf_dataset(features, batch_size=batch_size, label=label is not None,
                                shuffle=shuffle, seed=seed)
    x = feature_set.arrays(frame, features)
    tensors = {k: tf.constant(v) for k, v in x.items()}
    if label is not None:
        tensors = (tensors, tf.constant(frame[label].to_numpy(dtype=np.float32)))
    lengths = _lengths(feature_set, x, sort_by_length, shuffle)
    return _batches(tensors, len(frame), batch_size, shuffle, seed,
                    lengths).prefetch(tf.data.AUTOTUNE)


def _lengths(feature_set, x, name, shuffle):
    return sequence_lengths(feature_set, x, name) if name and shuffle else None


def encoded_dataset(model, feature_set, frame, batch_size=256, label=None, shuffle=False,
                    seed=0, chunk=1 << 16, sort_by_length=None):
    """Like :func:`make_dataset` (the same ``sort_by_length``), but yields
    ``model.encode_inputs`` of the rows: the lookups run once over the whole frame (in
    chunks) before training, or in the tf.data pipeline for a lazily read split, so training
    steps hold no string/hash lookups."""
    encode = _cached_fn(_ENCODE_FNS, model, lambda m, x: m.encode_inputs(x))
    if _is_split(frame):
        data = frame.tf_dataset(model.features, batch_size=batch_size,
                                label=label is not None, shuffle=shuffle, seed=seed)
        if label is not None:
            def encode_features(x, y):
                return encode(x), y

            return data.map(encode_features, num_parallel_calls=tf.data.AUTOTUNE)
        return data.map(encode, num_parallel_calls=tf.data.AUTOTUNE)
    x = feature_set.arrays(frame, model.features)
    n = len(frame)
    parts = [encode({k: tf.constant(v[s:s + chunk]) for k, v in x.items()})
             for s in range(0, n, chunk)] or [encode({k: tf.constant(v) for k, v in x.items()})]
    tensors = {k: tf.concat([p[k] for p in parts], axis=0) for k in parts[0]}
    if label is not None:
        tensors = (tensors, tf.constant(frame[label].to_numpy(dtype=np.float32)))
    lengths = _lengths(feature_set, x, sort_by_length, shuffle)
    return _batches(tensors, n, batch_size, shuffle, seed, lengths).prefetch(tf.data.AUTOTUNE)


class ValidationMetrics(keras.callbacks.Callback):
    """At the end of every epoch: the exact AUC and logloss of the model on a validation
    set, written to the epoch's logs as ``val_auc`` / ``val_loss`` (so ``EarlyStopping`` and
    ``History`` see them). One prediction pass, no per-step metric in the training step.

    Given a :class:`~recsys_tf.averaging.WeightAveraging` callback (listed before this one),
    it scores both the averaged and the raw weights, leaves the one with the higher AUC in
    place (the averages on a tie) and logs its figures as ``val_auc`` / ``val_loss``, with
    both AUCs as ``val_auc_averaged`` / ``val_auc_raw``: averaging is kept where it validates
    better, epoch by epoch, and never trades validation AUC away.

    Args:
      data: batched ``tf.data`` of features (raw or encoded), in the order of ``labels``.
      labels: the validation labels.
      averaging: a ``WeightAveraging`` callback of the same ``fit``, or None.
    """

    def __init__(self, data, labels, averaging=None):
        super().__init__()
        self.data, self.labels = data, np.asarray(labels, dtype=np.float64)
        self.averaging = averaging

    def _scores(self):
        p = predict_batches(self.model, self.data)
        return M.auc(self.labels, p), M.logloss(self.labels, p)

    def on_epoch_end(self, epoch, logs=None):
        averaging = self.averaging
        active = averaging is not None and averaging.momentum > 0
        if active:
            averaging.swap_out()
        auc, loss = self._scores()
        if active:
            averaging.swap_in()
            avg_auc, avg_loss = self._scores()
            if logs is not None:
                logs["val_auc_raw"], logs["val_auc_averaged"] = auc, avg_auc
            if avg_auc >= auc:
                auc, loss = avg_auc, avg_loss
            else:
                averaging.swap_out()
        if logs is not None:
            logs["val_auc"], logs["val_loss"] = auc, loss


_PREDICT_FNS, _ENCODE_FNS = weakref.WeakKeyDictionary(), weakref.WeakKeyDictionary()


def _cached_fn(cache, model, body):
    """One ``tf.function`` of ``body(model, x)`` per model, reused across calls (a new one
    per call would retrace every time); the cache does not keep the model alive."""
    fn = cache.get(model)
    if fn is None:
        ref = weakref.ref(model)

        def step(x):
            return body(ref(), x)

        fn = cache[model] = tf.function(step, reduce_retracing=True)
    return fn


def predict_batches(model, data):
    """Probabilities of a model over a batched dataset of features (numpy ``[n]``), through
    one compiled function per model (reused across calls)."""
    fn = _cached_fn(_PREDICT_FNS, model, lambda m, x: m(x, training=False))
    out = [fn(b[0] if isinstance(b, tuple) else b).numpy().reshape(-1) for b in data]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _features_only(x, y):
    return x


def _verbose(verbose):
    if verbose is None:
        return 1 if sys.stdout.isatty() else 2
    return verbose


def _n_rows(frame):
    return 0 if frame is None else len(frame)


OPTIMIZERS = {"lazy_adam": LazyAdam, "adam": FusedAdam, "keras_adam": keras.optimizers.Adam}


EMBEDDING_LR_MULTIPLIER = 3.0
WEIGHT_AVERAGING = 0.99


def ranker_optimizer(model, learning_rate=1e-3, optimizer="lazy_adam",
                     embedding_lr_multiplier=EMBEDDING_LR_MULTIPLIER):
    """The optimizer :func:`train_ranker` compiles ``model`` with: ``optimizer`` (a name of
    ``OPTIMIZERS``: ``"lazy_adam"``, ``"adam"`` or ``"keras_adam"``) at ``learning_rate``, or
    the model's own ``default_optimizer`` (Wide & Deep: FTRL for the wide part, the chosen
    Adam for the deep part). With ``"lazy_adam"`` the embedding tables' rows step at
    ``embedding_lr_multiplier`` times ``learning_rate`` (:class:`LazyAdam`'s
    ``sparse_multiplier``); the other optimizers ignore it."""
    if not isinstance(optimizer, str):
        return optimizer
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r}, expected one of {sorted(OPTIMIZERS)} or an "
                         "optimizer instance")

    def make():
        if optimizer == "lazy_adam":
            return LazyAdam(learning_rate, sparse_multiplier=embedding_lr_multiplier)
        return OPTIMIZERS[optimizer](learning_rate)

    if hasattr(model, "default_optimizer"):
        try:
            return model.default_optimizer(learning_rate, deep_optimizer=make())
        except TypeError:
            return model.default_optimizer(learning_rate)
    return make()


def train_ranker(model, ds, epochs=2, batch_size=256, learning_rate=1e-3, verbose=None,
                 patience=1, strategy=None, seed=0, optimizer=None, steps_per_execution=None,
                 encode=None, jit_compile=False, sort_by_length=None,
                 embedding_lr_multiplier=EMBEDDING_LR_MULTIPLIER, weight_averaging=None,
                 checkpoint_dir=None, logdir=None, encoder=None, steps_per_epoch=None):
    """Fits a ranker on ``ds.train`` (early stopping on ``ds.valid``'s AUC when there is one,
    keeping the best epoch's weights).

    Args (beyond the obvious):
      optimizer: ``"lazy_adam"`` (:class:`LazyAdam`: sparse row updates of embedding tables),
        ``"adam"`` (:class:`FusedAdam`: Keras' Adam's updates, one kernel per variable),
        ``"keras_adam"`` (``keras.optimizers.Adam`` itself) or an optimizer instance.
        Default: ``"lazy_adam"`` for the CTR rankers that take encoded inputs (Wide & Deep,
        DeepFM, xDeepFM, DCN-v2), ``"adam"`` for the others.
      embedding_lr_multiplier: with ``"lazy_adam"``, the embedding tables learn at this
        multiple of ``learning_rate`` (default 3). Chosen on validation AUC (two seeds, Adam at
        1e-3): against 1x it gained more than 0.001 in 5 of 8 (model, data set) cells -
        MovieLens 100K DeepFM +0.003 and xDeepFM +0.002, criteo-synthetic Wide & Deep +0.007,
        xDeepFM +0.008 and DCN-v2 +0.004 -, left two level and lost 0.004 on criteo-synthetic
        DeepFM (benchmarks/README.md). 1 gives the tables the layers' rate.
      weight_averaging: momentum of an exponential moving average of the weights
        (:class:`~recsys_tf.averaging.WeightAveraging`); at every epoch's end the averaged and
        the raw weights are both scored on ``ds.valid`` and the better one is kept (without a
        validation split the averages are). 0 turns it off. Default:
        :data:`WEIGHT_AVERAGING` (0.99) for the CTR rankers that take encoded inputs, 0 for
        the others (not measured with it). Chosen on validation AUC (two seeds, the
        benchmark's configuration): on MovieLens 100K the averages lifted all four CTR
        rankers' validation AUC by 0.002-0.003 (0.995 a little more, but it ran into the
        10-epoch cap); on criteo-synthetic, which peaks after two or three epochs, they
        validated better for Wide & Deep and DeepFM only, hence the choice per epoch
        (benchmarks/README.md).
      steps_per_execution: training steps run per call into the compiled function (fewer
        Python round trips). Default: 16 (measured against one step per call in
        benchmarks/README.md, DIEN section).
      encode: feed the model encoded inputs (lookups done once, outside the training step);
        default: when the model supports it.
      jit_compile: compile the training step with XLA (default False: with embedding
        lookups on CPU it is slower; benchmarks/README.md).
      sort_by_length: a sequence feature whose length groups the training rows into batches
        (see :func:`index_batches`), or False for plain shuffled batches. Default: the
        model's ``length_feature`` when it has one (DIEN, which cuts each batch after its
        longest history), else False.

      strategy: a ``tf.distribute`` strategy (:mod:`recsys_tf.distributed`); the model must
        have been built under its scope. Under ``parameter_server`` and ``multi_worker`` the
        data is fed by a dataset function, each worker reading its own share, repeated, in
        ``steps_per_epoch`` steps an epoch (default: one pass over ``ds.train``); all epochs
        run (no early stopping) and weight averaging is off.
      checkpoint_dir: back up the training state there at every epoch's end
        (``keras.callbacks.BackupAndRestore``); a run started again with the same arguments
        resumes after the last backed-up epoch, to the same total step count.
      logdir: TensorBoard summaries of every epoch (:class:`EpochSummaries`).
      encoder: a model of the same features that does the lookups of the encoded inputs
        (default ``model``; under a distributed strategy, a copy built without it).

    ``ds.train``/``ds.valid`` may be DataFrames or lazily read splits (streaming Criteo). Returns
    a dict with ``train_seconds``, ``train_examples_per_sec``, ``epochs_run``, ``steps`` (the
    optimizer's step count at the end) and the per-epoch ``history``.
    """
    strategy = strategy or tf.distribute.get_strategy()
    spread = _distributed(strategy)
    fs, label = ds.feature_set, ds.feature_set.label
    fast = bool(getattr(model, "supports_encoded_inputs", False))
    encode = fast if encode is None else encode
    optimizer = ("lazy_adam" if fast else "adam") if optimizer is None else optimizer
    if steps_per_execution is None:
        steps_per_execution = 16
    with strategy.scope():
        model.compile(optimizer=ranker_optimizer(model, learning_rate, optimizer,
                                                 embedding_lr_multiplier),
                      loss="binary_crossentropy",
                      steps_per_execution=max(1, int(steps_per_execution)),
                      jit_compile=bool(jit_compile))
    build = encoded_dataset if encode else None
    encoder = encoder or model
    if sort_by_length is None:
        sort_by_length = getattr(model, "length_feature", None)

    def data(frame, size, shuffle):
        by = sort_by_length or None
        if build is not None:
            return build(encoder, fs, frame, size, label, shuffle=shuffle, seed=seed,
                         sort_by_length=by)
        return make_dataset(fs, frame, model.features, size, label, shuffle=shuffle, seed=seed,
                            sort_by_length=by)

    if spread and _is_split(ds.train):         # files: each worker parses its own share
        train, steps = distributed_data(strategy, ds.train, batch_size, seed, steps_per_epoch,
                                        features=model.features)
        weight_averaging = 0.0
    elif spread:
        if build is not None:
            features = encoded_arrays(encoder, fs, ds.train)
        else:
            features = fs.arrays(ds.train, model.features)
        train, steps = distributed_data(
            strategy, (features, ds.train[label].to_numpy(dtype=np.float32)), batch_size,
            seed, steps_per_epoch)
        weight_averaging = 0.0
    else:
        train, steps = data(ds.train, batch_size, True), steps_per_epoch
        if steps:       # epochs of a set number of steps: the data runs on across epochs
            train = train.repeat()
    if weight_averaging is None:
        weight_averaging = WEIGHT_AVERAGING if fast else 0.0
    averaging = WeightAveraging(weight_averaging)
    callbacks = [averaging] if averaging.momentum else []
    if ds.valid is not None and _n_rows(ds.valid):
        valid = data(ds.valid, 4096, False).map(_features_only)
        callbacks.append(ValidationMetrics(valid, np.asarray(ds.valid[label]), averaging))
        if not spread:
            callbacks.append(keras.callbacks.EarlyStopping(
                monitor="val_auc", mode="max", patience=patience, restore_best_weights=True))
    with strategy.scope():
        build_for_training(model)
    examples = (steps * batch_size) if steps else _n_rows(ds.train)
    return _fit(model, train, epochs, steps, callbacks, examples, checkpoint_dir, logdir,
                verbose, {"weight_averaging": averaging.momentum})


def _distributed(strategy):
    from recsys_tf import distributed

    return strategy is not None and distributed.strategy_name(strategy) != "one_device"


def _fit(model, train, epochs, steps, callbacks, examples_per_epoch, checkpoint_dir, logdir,
         verbose, extra):
    """``model.fit`` with the backup/restore and summary callbacks; the trainer's result."""
    callbacks = list(callbacks)
    if logdir:
        callbacks.append(EpochSummaries(logdir, examples_per_epoch))
    if checkpoint_dir:
        callbacks.append(keras.callbacks.BackupAndRestore(checkpoint_dir, save_freq="epoch",
                                                          delete_checkpoint=False))
    iterations = model.optimizer.iterations if not isinstance(model.optimizer, (
        list, tuple)) else model.optimizer[1].iterations
    start = time.perf_counter()
    hist = model.fit(train, epochs=epochs, steps_per_epoch=steps, callbacks=callbacks,
                     verbose=_verbose(verbose))
    seconds = time.perf_counter() - start
    epochs_run = len(hist.history.get("loss", []))
    steps_done = int(iterations.numpy())
    return {"train_seconds": seconds, "epochs_run": epochs_run, "steps": steps_done, **extra,
            "train_examples_per_sec": examples_per_epoch * epochs_run / max(seconds, 1e-9),
            "history": {k: [float(v) for v in vs] for k, vs in hist.history.items()}}


def encoded_arrays(model, feature_set, frame, chunk=1 << 16):
    """``model.encode_inputs`` of every row of ``frame`` as numpy arrays."""
    encode = _cached_fn(_ENCODE_FNS, model, lambda m, x: m.encode_inputs(x))
    x = feature_set.arrays(frame, model.features)
    parts = [encode({k: tf.constant(v[s:s + chunk]) for k, v in x.items()})
             for s in range(0, max(len(frame), 1), chunk)]
    return {k: np.concatenate([p[k].numpy() for p in parts]) for k in parts[0]}


def distributed_data(strategy, arrays, batch_size, seed=0, steps_per_epoch=None,
                     features=None):
    """Training data for ``model.fit`` under a ``parameter_server`` or ``multi_worker``
    strategy: ``(data, steps_per_epoch)``.

    ``arrays``: a structure of ``[n, ...]`` numpy arrays, or a lazily read split of files
    (with a ``tf_dataset`` method taking an ``input_context``; ``features``: the raw features
    to parse). Each worker's input pipeline reads its own share (``shard(num_input_pipelines,
    input_pipeline_id)``, or its own files), shuffled with its own seed, repeated without end
    and batched (a finite dataset would end a parameter-server worker with
    ``OutOfRangeError``), so ``fit`` runs ``steps_per_epoch`` steps an epoch (default:
    ``n // batch_size``, one pass over the data across all workers).
    """
    split = _is_split(arrays)
    n = len(arrays) if split else len(tf.nest.flatten(arrays)[0])
    steps = int(steps_per_epoch or max(1, n // int(batch_size)))

    def dataset_fn(context=None):
        if split:
            size = (context.get_per_replica_batch_size(int(batch_size)) if context is not None
                    else int(batch_size))
            return arrays.tf_dataset(features, batch_size=size, label=True, shuffle=True,
                                     seed=seed, input_context=context).repeat()
        data = tf.data.Dataset.from_tensor_slices(arrays)
        shard = 0
        size = int(batch_size)
        if context is not None:
            shard = context.input_pipeline_id
            size = context.get_per_replica_batch_size(int(batch_size))
            if context.num_input_pipelines > 1:
                data = data.shard(context.num_input_pipelines, shard)
        data = data.shuffle(min(n, 1 << 16), seed=int(seed) * 1009 + shard,
                            reshuffle_each_iteration=True)
        return data.repeat().batch(size, drop_remainder=True).prefetch(2)

    from recsys_tf import distributed

    if distributed.is_parameter_server(strategy):
        return keras.utils.experimental.DatasetCreator(dataset_fn), steps
    return strategy.distribute_datasets_from_function(dataset_fn), steps


class EpochSummaries(keras.callbacks.Callback):
    """TensorBoard summaries at every epoch's end: every number in the epoch's logs (the
    training ``loss``, ``val_auc`` and ``val_loss`` when validated) and ``examples_per_sec``
    (``examples_per_epoch`` over the epoch's wall time), written by this process to
    ``logdir/train`` under the epoch's global step count.

    Args:
      logdir: the TensorBoard log directory.
      examples_per_epoch: training rows (or steps x batch size) an epoch.
    """

    def __init__(self, logdir, examples_per_epoch):
        super().__init__()
        self.logdir, self.examples_per_epoch = logdir, int(examples_per_epoch)
        self._writer, self._start = None, None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.logdir, "train"))
        seconds = max(time.perf_counter() - (self._start or time.perf_counter()), 1e-9)
        values = dict(logs or {})
        values["examples_per_sec"] = self.examples_per_epoch / seconds
        with self._writer.as_default():
            for key, value in values.items():
                try:
                    tf.summary.scalar(key, float(value), step=epoch + 1)
                except (TypeError, ValueError):
                    continue
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def build_for_training(model):
    """Creates, before ``fit``, the variables Keras would otherwise create inside the first
    traced training step - the model's weights and metrics (one call on two padding rows) and
    the optimizer's slots (both of Wide & Deep's) - so the step is traced once instead of
    twice (``tf.function`` retraces a function that created variables); for DIEN that is
    seconds of graph building."""
    dummy = model.dummy_inputs(2)
    model(dummy, training=False)                    # the weights
    frozen = [(v, v.numpy()) for v in model.non_trainable_variables]
    model(dummy, training=True)                     # what only training makes (add_metric)
    for variable, value in frozen:                  # e.g. batch-norm statistics: untouched
        variable.assign(value)
    optimizer = model.optimizer
    if isinstance(optimizer, keras.optimizers.Optimizer):
        optimizer.build(model.trainable_variables)
    elif isinstance(optimizer, (list, tuple)) and hasattr(model, "linear_model"):
        # WideDeepModel.train_step: [linear optimizer, DNN optimizer]
        optimizer[0].build(model.linear_model.trainable_variables)
        optimizer[1].build(model.dnn_model.trainable_variables)


def predict(model, feature_set, frame, batch_size=4096):
    """Click probabilities for every row of ``frame`` (numpy ``[n]``), through the raw-input
    path an export serves (lookups inside the model)."""
    if not _n_rows(frame):
        return np.zeros(0, np.float32)
    return predict_batches(model, make_dataset(feature_set, frame, model.features, batch_size))


def evaluate_ranker(model, ds, frame=None):
    """AUC, logloss and GAUC on ``frame`` (default ``ds.test``); ``oracle_auc`` when known."""
    frame = ds.test if frame is None else frame
    fs = ds.feature_set
    p = predict(model, fs, frame)
    y = np.asarray(frame[fs.label]).astype(np.float64)
    out = {"auc": M.auc(y, p), "logloss": M.logloss(y, p)}
    if fs.user_id is not None:
        out["gauc"] = M.gauc(np.asarray(frame[fs.user_id]), y, p)
    if "p_click" in frame:
        out["oracle_auc"] = M.auc(y, np.asarray(frame["p_click"]))
        out["oracle_logloss"] = M.logloss(y, np.asarray(frame["p_click"]))
    return out


def train_retrieval(model, ds, epochs=3, batch_size=256, learning_rate=0.1, verbose=None,
                    strategy=None, seed=0, checkpoint_dir=None, logdir=None,
                    steps_per_epoch=None):
    """Fits a two-tower model on ``ds.retrieval_train`` (Adagrad, as in TFRS's tutorials).
    ``strategy``, ``checkpoint_dir``, ``logdir`` and ``steps_per_epoch`` as in
    :func:`train_ranker`."""
    strategy = strategy or tf.distribute.get_strategy()
    fs = ds.feature_set
    model.set_item_frequencies(ds.retrieval_train[fs.item_id].to_numpy())
    with strategy.scope():
        model.compile(optimizer=keras.optimizers.Adagrad(learning_rate))
    features = model.query_features + model.candidate_features
    if _distributed(strategy):
        train, steps = distributed_data(strategy, fs.arrays(ds.retrieval_train, features),
                                        batch_size, seed, steps_per_epoch)
    else:
        train = make_dataset(fs, ds.retrieval_train, features, batch_size, shuffle=True,
                             seed=seed)
        steps = steps_per_epoch
        if steps:
            train = train.repeat()
    with strategy.scope():
        model(padding_inputs(fs, features), training=False)
        model.optimizer.build(model.trainable_variables)
    examples = (steps * batch_size) if steps else len(ds.retrieval_train)
    return _fit(model, train, epochs, steps, [], examples, checkpoint_dir, logdir, verbose, {})



def item_embeddings(model, feature_set, items, batch_size=8192):
    """Candidate-tower embeddings ``[n_items, dim]`` for the rows of the ``items`` frame."""
    data = make_dataset(feature_set, items, model.candidate_features, batch_size)
    return np.concatenate([model.candidate_model(b).numpy() for b in data])


def query_embeddings(model, feature_set, frame, batch_size=8192):
    data = make_dataset(feature_set, frame, model.query_features, batch_size)
    return np.concatenate([model.query_model(b).numpy() for b in data])


def evaluate_retrieval(model, ds, ks=(10, 100), frame=None, chunk=2048):
    """Retrieval quality over the full item corpus, one query per held-out interaction.

    ``top_{k}_accuracy``: the held-out item is among the top k of all items (TFRS's
    FactorizedTopK protocol, nothing filtered). ``recall_at_{k}`` / ``ndcg_at_{k}`` / ``mrr``:
    the same ranking with the user's training items removed first (what a served list shows).
    """
    frame = ds.retrieval_test if frame is None else frame
    fs = ds.feature_set
    item_ids = ds.items[fs.item_id].to_numpy()
    index = {v: i for i, v in enumerate(item_ids.tolist())}
    cand = item_embeddings(model, fs, ds.items)
    queries = query_embeddings(model, fs, frame)
    target = np.array([index.get(v, -1) for v in frame[fs.item_id].tolist()])
    seen_by_user = {}
    if fs.user_id is not None:
        for u, items in ds.retrieval_train.groupby(fs.user_id)[fs.item_id]:
            seen_by_user[u] = np.array([index[v] for v in items.tolist() if v in index])
    users = frame[fs.user_id].tolist() if fs.user_id is not None else [None] * len(frame)
    kmax = max(ks)
    top_raw, top_filtered = [], []
    for s in range(0, len(frame), chunk):
        scores = queries[s:s + chunk] @ cand.T
        top_raw.append(_topk(scores, kmax))
        for r, u in enumerate(users[s:s + chunk]):
            seen = seen_by_user.get(u)
            if seen is not None and len(seen):
                keep = seen[seen != target[s + r]]
                scores[r, keep] = -np.inf
        top_filtered.append(_topk(scores, kmax))
    top_raw, top_filtered = np.concatenate(top_raw), np.concatenate(top_filtered)
    relevant = target[:, None]
    out = {}
    width = top_raw.shape[1]  # a catalogue smaller than k: every item is in the top k
    for k in ks:
        out[f"top_{k}_accuracy"] = M.hit_rate_at_k(top_raw, relevant, min(k, width))
        out[f"recall_at_{k}"] = M.recall_at_k(top_filtered, relevant, min(k, width))
    out["ndcg_at_10"] = M.ndcg_at_k(top_filtered, relevant, min(10, width))
    out["mrr"] = M.mrr(top_filtered, relevant)
    return out


def _topk(scores, k):
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)
