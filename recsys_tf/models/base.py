"""RankingModel: what every click-through-rate ranker in the zoo shares.

A ranker is built from a FeatureSet and the names of the features it uses; it takes a dict of
raw feature tensors and returns the click probability ``sigmoid(logit(x))`` of shape ``[batch]``.
Subclasses implement :meth:`logit` and extend :meth:`get_config` with their own arguments.

Args:
  feature_set: the FeatureSet (or its ``to_dict()``).
  features: names of the features to use (default: every feature of the set).

Encoded inputs: a ranker with ``supports_encoded_inputs = True`` also accepts what its
:meth:`encode_inputs` returns - the vocabulary/hash lookups done ahead of time
(see :mod:`recsys_tf.layers.embedding`). The trainer runs ``encode_inputs`` once over
the data (or in the tf.data pipeline) so a training step holds no string lookups; exports and
``model(raw_inputs)`` are unchanged.
"""
from recsys_tf.backend import keras, tf
from recsys_tf.features import FeatureSet
from recsys_tf.layers.embedding import is_encoded, padding_inputs, repeat_rows


class RankingModel(keras.Model):
    output_name = "probability"
    supports_encoded_inputs = False

    def __init__(self, feature_set, features=None, **kwargs):
        super().__init__(**kwargs)
        fs = feature_set if isinstance(feature_set, FeatureSet) else FeatureSet.from_dict(feature_set)
        self.features = list(features) if features is not None else fs.names
        self.feature_set = fs.select(self.features)

    def logit(self, inputs, training=None):
        raise NotImplementedError

    def call(self, inputs, training=None):
        inputs = self.encoded(inputs)
        return tf.sigmoid(tf.squeeze(self.logit(inputs, training=training), axis=-1))

    # plain Python, called from the export's traced signature: not converted by AutoGraph
    @tf.autograph.experimental.do_not_convert
    def one_user_probability(self, inputs, rows, once):
        """The click probability ``[rows]`` of one user's candidates: ``inputs`` whose features
        named in ``once`` (user, context) are one row standing for all ``rows`` rows of the
        others (what the export's ``one_user`` signature serves). Equal to the model on the
        inputs with that row repeated; a model that takes encoded inputs looks the row up once
        and repeats its table rows instead."""
        if self.supports_encoded_inputs:
            return self(self.encode_inputs(inputs, rows=rows), training=False)
        return self(self.user_row_repeated(inputs, rows, once), training=False)

    @staticmethod
    def user_row_repeated(inputs, rows, once):
        """``inputs`` with the one-row features named in ``once`` repeated to ``rows`` rows."""
        return {n: repeat_rows(v, rows) if n in once else v for n, v in inputs.items()}

    def encoded(self, inputs):
        """``inputs`` with the lookups done once for all layers (unchanged if they already
        are, or if the model takes raw inputs only)."""
        if not self.supports_encoded_inputs or is_encoded(inputs):
            return inputs
        return self.encode_inputs(inputs)

    def encode_inputs(self, inputs, rows=None):
        """Raw inputs -> encoded inputs (lookups done); see the module docstring. Models that
        set ``supports_encoded_inputs`` expose the layer doing their lookups as ``embedding``.
        ``rows``: inputs may be one row standing for ``rows`` rows (looked up once, repeated)."""
        if not self.supports_encoded_inputs:
            raise NotImplementedError(f"{type(self).__name__} takes raw inputs only")
        return self.embedding.encode(inputs, rows=rows)

    def input_signature(self):
        """TensorSpecs of the raw inputs, named as the features (the SavedModel's inputs)."""
        return self.feature_set.input_signature(self.features)

    def dummy_inputs(self, n=2):
        """A batch of ``n`` padding/zero values for every input (builds the weights)."""
        return padding_inputs(self.feature_set, self.features, n)

    def get_config(self):
        return {"feature_set": self.feature_set.to_dict(), "features": self.features}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)
