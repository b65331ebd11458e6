"""Features, declared once.

A dataset module declares its features in one :class:`FeatureSet`; every model picks the
features it uses by name, and the lookups (vocabulary, hashing, normalisation) live inside the
model, so an exported SavedModel takes raw values. Unknown ids fall into an OOV bucket.

Three kinds of feature:

* :class:`Categorical` - a string or integer id looked up in a vocabulary (``vocabulary``) or
  hashed into ``hash_buckets``; embedded with ``dim`` dimensions. Features with the same
  ``table`` share one lookup and one embedding table.
* :class:`Numeric` - a float, normalised as ``(log1p(x) if log else x - mean) / std``; how a
  missing value (NaN) is treated is part of the declaration (``missing``: the training mean,
  a fill value before the transform, or a fill value plus a learned missing term).
* :class:`Sequence` - padded ids of a categorical feature (``of``), up to ``max_len`` long;
  shares that feature's table. Padding is ``""`` for strings and ``0`` for integers and is
  masked out.

Each feature has a ``role`` (``"user"``, ``"item"`` or ``"context"``): two-tower models build
their query tower from user and context features and their candidate tower from item features,
and the exported item table holds the item features.

Example::

    fs = FeatureSet(
        [Categorical("user_id", vocabulary=["u1", "u2"], role="user"),
         Categorical("item_id", vocabulary=["i1", "i2", "i3"], role="item"),
         Numeric("price", mean=10.0, std=5.0, role="item"),
         Sequence("history", of="item_id", max_len=5)],
        label="label", user_id="user_id", item_id="item_id")
    fs2 = FeatureSet.from_json(fs.to_json())   # same declaration
"""
from __future__ import annotations

import dataclasses
import json
from typing import Iterable, Sequence as Seq

import numpy as np

ROLES = ("user", "item", "context")
DTYPES = ("string", "int64")
MISSING_MODES = ("mean", "fill", "indicator")


def _check_role(name, role):
    if role not in ROLES:
        raise ValueError(f"feature {name!r}: role={role!r}, expected one of {ROLES}")


@dataclasses.dataclass(frozen=True)
class Categorical:
    """A categorical id: vocabulary lookup or hashing, then an embedding.

    Args:
      name: input name (also the SavedModel input name).
      vocabulary: the known values; values outside it go to one of ``num_oov`` OOV buckets.
      hash_buckets: instead of a vocabulary, hash values into this many buckets.
      dim: embedding size (default 16).
      dtype: ``"string"`` (default) or ``"int64"``: the raw value type the model accepts.
      table: name of the lookup/embedding table; features with the same table share it
        (default: the feature's own name).
      num_oov: number of OOV buckets for vocabulary lookups (default 1).
      role: ``"user"``, ``"item"`` or ``"context"`` (default ``"context"``).
    """

    name: str
    vocabulary: tuple | None = None
    hash_buckets: int | None = None
    dim: int = 16
    dtype: str = "string"
    table: str | None = None
    num_oov: int = 1
    role: str = "context"
    kind: str = dataclasses.field(default="categorical", init=False)

    def __post_init__(self):
        if (self.vocabulary is None) == (self.hash_buckets is None):
            raise ValueError(
                f"feature {self.name!r}: give exactly one of vocabulary or hash_buckets "
                f"(got vocabulary={'set' if self.vocabulary is not None else None}, "
                f"hash_buckets={self.hash_buckets})")
        if self.dtype not in DTYPES:
            raise ValueError(f"feature {self.name!r}: dtype={self.dtype!r}, expected one of {DTYPES}")
        if self.vocabulary is not None:
            vocab = tuple(str(v) if self.dtype == "string" else int(v) for v in self.vocabulary)
            if len(set(vocab)) != len(vocab):
                raise ValueError(f"feature {self.name!r}: vocabulary has duplicate values")
            if not vocab:
                raise ValueError(f"feature {self.name!r}: vocabulary is empty")
            object.__setattr__(self, "vocabulary", vocab)
        elif int(self.hash_buckets) < 1:
            raise ValueError(f"feature {self.name!r}: hash_buckets={self.hash_buckets}, expected >= 1")
        if self.num_oov < 1:
            raise ValueError(f"feature {self.name!r}: num_oov={self.num_oov}, expected >= 1")
        if self.table is None:
            object.__setattr__(self, "table", self.name)
        _check_role(self.name, self.role)

    @property
    def num_buckets(self) -> int:
        """Rows of the embedding table: OOV buckets first, then the vocabulary (or the hash bins)."""
        if self.vocabulary is not None:
            return self.num_oov + len(self.vocabulary)
        return int(self.hash_buckets)

    @property
    def pad(self):
        return "" if self.dtype == "string" else 0


@dataclasses.dataclass(frozen=True)
class Numeric:
    """A float feature, normalised inside the model.

    ``z = (f(x) - mean) / std`` with ``f = log1p(max(x, 0))`` when ``log`` is set, else identity.
    A missing value (NaN in the raw input, in training and at serving alike) is treated as
    ``missing`` declares:

    * ``"mean"`` (default): ``z = 0``, i.e. the training mean of ``f(x)``, with nothing to tell
      it from a value at the mean.
    * ``"fill"``: ``x`` is replaced by ``fill_value`` before the transform, so a missing count
      with ``fill_value=0`` reads as "no events": ``z = (f(fill_value) - mean) / std``.
    * ``"indicator"``: as ``"fill"``, and the model adds a learned term where the value is
      missing (the indicator times a learned weight: a learned missing vector for a field
      embedding, a learned offset for a value, an indicator input for a linear part), so
      missing can differ from the fill value.

    With ``"fill"``/``"indicator"`` :meth:`FeatureSet.fit_numeric` computes ``mean``/``std``
    over the filled values (what the model sees); with ``"mean"`` over the present ones.

    Args:
      name: input name.
      mean, std: normalisation constants (default 0 and 1; :meth:`FeatureSet.fit_numeric`
        fills them from training data).
      log: apply ``log1p`` first (default False), as for heavy-tailed counts.
      role: ``"user"``, ``"item"`` or ``"context"`` (default ``"context"``).
      missing: ``"mean"`` (default), ``"fill"`` or ``"indicator"``.
      fill_value: the raw value a missing one becomes with ``"fill"``/``"indicator"``
        (default 0.0).

    Example::

        Numeric("I1", log=True, missing="fill", fill_value=0.0)
    """

    name: str
    mean: float = 0.0
    std: float = 1.0
    log: bool = False
    role: str = "context"
    missing: str = "mean"
    fill_value: float = 0.0
    kind: str = dataclasses.field(default="numeric", init=False)

    def __post_init__(self):
        if not self.std > 0:
            raise ValueError(f"feature {self.name!r}: std={self.std}, expected > 0")
        if self.missing not in MISSING_MODES:
            raise ValueError(f"feature {self.name!r}: missing={self.missing!r}, expected one of "
                             f"{MISSING_MODES}")
        if not np.isfinite(self.fill_value):
            raise ValueError(f"feature {self.name!r}: fill_value={self.fill_value!r}, expected "
                             "a finite number")
        object.__setattr__(self, "fill_value", float(self.fill_value))
        _check_role(self.name, self.role)

    @property
    def fills(self) -> bool:
        """Whether a missing value is replaced by ``fill_value`` before the transform."""
        return self.missing != "mean"

    def transform(self, x: np.ndarray) -> np.ndarray:
        """``f(x)`` before normalisation: the fill (if declared), then ``log1p(max(x, 0))`` if
        ``log``. Missing values stay NaN with ``missing="mean"``."""
        x = np.asarray(x, dtype=np.float64)
        if self.fills:
            x = np.where(np.isnan(x), self.fill_value, x)
        if self.log:
            x = np.log1p(np.maximum(x, 0.0))
        return x

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """``z`` as the model computes it, without the learned missing term (numpy; float64)."""
        z = (self.transform(x) - self.mean) / self.std
        return np.where(np.isnan(z), 0.0, z)


@dataclasses.dataclass(frozen=True)
class Sequence:
    """Padded ids of a categorical feature, e.g. a user's recent items.

    Args:
      name: input name; the model input has shape ``[batch, max_len]``.
      of: the :class:`Categorical` whose table (vocabulary and embedding) the ids share.
      max_len: sequence length after padding/truncation (most recent items kept, left-aligned
        oldest-first; padding at the end).
      role: default ``"user"``.
    """

    name: str
    of: str
    max_len: int = 20
    role: str = "user"
    kind: str = dataclasses.field(default="sequence", init=False)

    def __post_init__(self):
        if self.max_len < 1:
            raise ValueError(f"feature {self.name!r}: max_len={self.max_len}, expected >= 1")
        _check_role(self.name, self.role)


_KINDS = {"categorical": Categorical, "numeric": Numeric, "sequence": Sequence}


class FeatureSet:
    """All features of one dataset, with the label and the user/item id feature names.

    Args:
      features: the declarations; names must be unique.
      label: name of the label column (default ``"label"``).
      user_id: name of the user id feature, if any.
      item_id: name of the item id feature, if any.
    """

    def __init__(self, features: Iterable, label: str | None = "label",
                 user_id: str | None = None, item_id: str | None = None):
        self.features = tuple(features)
        self._by_name = {}
        for f in self.features:
            if f.name in self._by_name:
                raise ValueError(f"duplicate feature name {f.name!r}")
            self._by_name[f.name] = f
        for f in self.features:
            if isinstance(f, Sequence):
                base = self._by_name.get(f.of)
                if not isinstance(base, Categorical):
                    raise ValueError(f"sequence feature {f.name!r}: of={f.of!r} must name a "
                                     f"Categorical feature of this FeatureSet, got {type(base).__name__}")
        for name, what in ((user_id, "user_id"), (item_id, "item_id")):
            if name is not None and not isinstance(self._by_name.get(name), Categorical):
                raise ValueError(f"{what}={name!r} must name a Categorical feature; "
                                 f"features are {self.names}")
        tables = {}
        for f in self.features:
            if isinstance(f, Categorical):
                other = tables.setdefault(f.table, f)
                if (other.vocabulary, other.hash_buckets, other.dim, other.dtype) != (
                        f.vocabulary, f.hash_buckets, f.dim, f.dtype):
                    raise ValueError(f"features {other.name!r} and {f.name!r} share table {f.table!r} "
                                     "but differ in vocabulary, hash_buckets, dim or dtype")
        self.label, self.user_id, self.item_id = label, user_id, item_id

    # -- access ---------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def __getitem__(self, name: str):
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no feature named {name!r}; features are {self.names}") from None

    def __contains__(self, name) -> bool:
        return name in self._by_name

    def __iter__(self):
        return iter(self.features)

    def __len__(self):
        return len(self.features)

    def __eq__(self, other):
        return isinstance(other, FeatureSet) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return f"FeatureSet({self.names}, label={self.label!r})"

    def with_role(self, *roles: str) -> list[str]:
        return [f.name for f in self.features if f.role in roles]

    def categorical_of(self, name: str) -> Categorical:
        """The Categorical that owns ``name``'s table (itself, or a sequence's ``of``)."""
        f = self[name]
        return self[f.of] if isinstance(f, Sequence) else f

    def select(self, names: Seq[str]) -> "FeatureSet":
        """A FeatureSet with only ``names`` (plus the categoricals their sequences refer to)."""
        keep = set(names)
        for n in names:
            f = self[n]
            if isinstance(f, Sequence):
                keep.add(f.of)
        return FeatureSet([f for f in self.features if f.name in keep], label=self.label,
                          user_id=self.user_id if self.user_id in keep else None,
                          item_id=self.item_id if self.item_id in keep else None)

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        feats = []
        for f in self.features:
            d = dataclasses.asdict(f)
            if d.get("vocabulary") is not None:
                d["vocabulary"] = list(d["vocabulary"])
            feats.append(d)
        return {"features": feats, "label": self.label, "user_id": self.user_id,
                "item_id": self.item_id}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSet":
        feats = []
        for fd in d["features"]:
            fd = dict(fd)
            kind = fd.pop("kind", None)
            if kind not in _KINDS:
                raise ValueError(f"feature {fd.get('name')!r}: kind={kind!r}, expected one of {list(_KINDS)}")
            if fd.get("vocabulary") is not None:
                fd["vocabulary"] = tuple(fd["vocabulary"])
            feats.append(_KINDS[kind](**fd))
        return cls(feats, label=d.get("label"), user_id=d.get("user_id"), item_id=d.get("item_id"))

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_json(cls, s: str) -> "FeatureSet":
        return cls.from_dict(json.loads(s))

    # -- data -------------------------------------------------------------------------------
    def fit_numeric(self, frame) -> "FeatureSet":
        """A copy whose Numeric features take mean/std from ``frame`` (the training split)."""
        out = []
        for f in self.features:
            if isinstance(f, Numeric) and f.name in frame:
                x = f.transform(frame[f.name].to_numpy(dtype=np.float64))
                mean = float(np.nanmean(x)) if np.isfinite(x).any() else 0.0
                std = float(np.nanstd(x)) if np.isfinite(x).any() else 1.0
                f = dataclasses.replace(f, mean=mean, std=std if std > 1e-12 else 1.0)
            out.append(f)
        return FeatureSet(out, label=self.label, user_id=self.user_id, item_id=self.item_id)

    def arrays(self, frame, names: Seq[str] | None = None) -> dict[str, np.ndarray]:
        """Model inputs from a DataFrame: one numpy array per feature, raw values.

        Categorical -> ``object`` (strings) or ``int64`` array ``[n]``; Numeric -> ``float32``
        ``[n]``; Sequence -> ``[n, max_len]`` padded at the end (a column of lists/arrays, most
        recent last; longer lists keep their last ``max_len`` items).
        """
        names = self.names if names is None else list(names)
        out = {}
        for name in names:
            f = self[name]
            if name not in frame:
                raise KeyError(f"column {name!r} (feature of kind {f.kind}) is missing from the "
                               f"data; columns are {list(frame.columns)}")
            col = frame[name]
            if isinstance(f, Numeric):
                out[name] = col.to_numpy(dtype=np.float32)
            elif isinstance(f, Categorical):
                out[name] = _as_ids(col.to_numpy(), f.dtype)
            else:
                base = self[f.of]
                out[name] = pad_sequences(col.tolist(), f.max_len, base.dtype)
        return out

    def input_signature(self, names: Seq[str] | None = None) -> dict:
        """``tf.TensorSpec`` per feature (batch dimension ``None``), named as the features."""
        from recsys_tf.backend import tf

        names = self.names if names is None else list(names)
        specs = {}
        for name in names:
            f = self[name]
            if isinstance(f, Numeric):
                specs[name] = tf.TensorSpec([None], tf.float32, name=name)
            elif isinstance(f, Categorical):
                specs[name] = tf.TensorSpec([None], tf.as_dtype(f.dtype), name=name)
            else:
                specs[name] = tf.TensorSpec([None, f.max_len], tf.as_dtype(self[f.of].dtype), name=name)
        return specs


def _as_ids(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "string":
        return np.array([str(v) for v in values], dtype=object)
    return np.asarray(values, dtype=np.int64)


def pad_sequences(seqs: Seq, max_len: int, dtype: str = "string") -> np.ndarray:
    """Left-aligned, end-padded ``[n, max_len]`` array keeping each list's last ``max_len`` items.

    Lists that are already end-padded lose their padding first, so re-padding to a shorter
    ``max_len`` keeps the most recent real items."""
    pad = "" if dtype == "string" else 0
    out = np.full((len(seqs), max_len), pad, dtype=object if dtype == "string" else np.int64)
    for i, s in enumerate(seqs):
        if s is None or (isinstance(s, float) and np.isnan(s)):
            continue
        s = list(s)
        while s and (s[-1] == pad or s[-1] is None or s[-1] == str(pad)):  # already padded
            s.pop()
        s = s[-max_len:]
        if s:
            out[i, : len(s)] = [str(v) for v in s] if dtype == "string" else s
    return out
