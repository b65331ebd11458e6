"""Item and user stores: the in-memory feature-store interface of the recommendation client.

:class:`ItemStore` is what a real feature store implements (item columns by id, the most
popular ids, optional embeddings); :class:`InMemoryItemStore` and :class:`UserStore` hold the
tables a retrieval export writes to ``assets.extra`` (``items.jsonl``, ``item_embeddings.npy``,
``users.jsonl``) in memory.
"""
from __future__ import annotations

import json
import os
import threading

import numpy as np

from recsys_tf.client import rerank
from recsys_tf.wire.contract import ITEM_EMBEDDINGS_FILE, ITEMS_FILE, USERS_FILE

__all__ = ["ItemStore", "InMemoryItemStore", "UserStore"]


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _is_number(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
        v, (bool, np.bool_))


def _as_column(values):
    """One column of the item table as a numpy array with one extra trailing slot for unknown
    ids: float64 (NaN) when the column holds floats, else object (None)."""
    if any(isinstance(v, (float, np.floating)) for v in values) and all(
            v is None or _is_number(v) for v in values):
        return np.array([np.nan if v is None else float(v) for v in values] + [np.nan])
    out = np.empty(len(values) + 1, dtype=object)
    out[:-1] = values
    return out


class ItemStore:
    """Item features by id: the interface a real feature store implements.

    ``key`` is the id column's name and ``size`` the number of items known (0 when the store
    cannot tell). ``get``, ``popular`` are required; ``vectors`` (item embeddings for MMR),
    ``unit_vectors`` (the same normalised ahead of time) and ``normalise`` have defaults. A
    store may also offer ``wire(item_ids)``: its string columns as object arrays of ``bytes``,
    one per id, which the ranker's request then takes as they are (see
    :class:`InMemoryItemStore`). The ``Recommender`` passes ``item_ids`` as a
    list (as a tuple to :class:`InMemoryItemStore` and its subclasses).
    """

    key = None
    size = 0

    def get(self, item_ids) -> dict:
        """``{column: array or list aligned with item_ids}``; None (NaN) for unknown ids."""
        raise NotImplementedError

    def popular(self, n, exclude=()) -> list:
        """The ``n`` most popular ids not in ``exclude``, most popular first."""
        raise NotImplementedError

    def vectors(self, item_ids):
        """``[len(item_ids), d]`` item embeddings, or None when the store has none."""
        return None

    def unit_vectors(self, item_ids):
        """The same rows scaled to unit length (``rerank.unit_rows``), for MMR; None when the
        store does not keep them (MMR then normalises :meth:`vectors` itself)."""
        return None

    def normalise(self, item_id):
        """An id as the store keys it: ids come back from Predict as bytes or numpy scalars."""
        if isinstance(item_id, bytes):
            item_id = item_id.decode()
        if isinstance(item_id, np.generic):
            item_id = item_id.item()
        return item_id

    def normalise_many(self, item_ids) -> list:
        return [self.normalise(i) for i in item_ids]


class InMemoryItemStore(ItemStore):
    """The exported item table (``items.jsonl`` + ``item_embeddings.npy``) held in memory,
    column by column, so hydrating a few hundred candidates is a dict lookup per id plus one
    numpy gather per column."""

    def __init__(self, rows, key, embeddings=None):
        self.key = key
        self.ids = [r[key] for r in rows]
        self._pos = {i: n for n, i in enumerate(self.ids)}
        if len(self._pos) != len(self.ids):
            raise ValueError(f"item table: duplicate values in the id column {key!r}")
        self._unknown = len(self.ids)  # index of the trailing "unknown" slot
        columns = []
        for r in rows:
            columns += [c for c in r if c != key and c not in columns]
        self.columns = columns
        self._data = {c: _as_column([r.get(c) for r in rows]) for c in columns}
        self.rows = {r[key]: r for r in rows}
        # the string columns (and str ids) as the UTF-8 bytes a request carries, encoded once
        wire = {c: col for c, col in self._data.items() if col.dtype == object
                and all(v is None or isinstance(v, str) for v in col)
                and any(isinstance(v, str) for v in col)}
        if self.ids and all(isinstance(i, str) for i in self.ids):
            wire[key] = np.array(self.ids + [None], dtype=object)
        self._wire = {c: np.array([b"" if v is None else v.encode() for v in col], dtype=object)
                      for c, col in wire.items()}
        # rows of str ids by their UTF-8 bytes, as Predict returns them: normalise_many hands
        # back the table's own id objects (no new strings to build, their hashes already
        # known), and ids_and_rows their rows as well, from the same one dictionary pass
        self._row_by_bytes = ({i.encode(): n for n, i in enumerate(self.ids)}
                              if key in self._wire else {})
        self.embeddings = None
        if embeddings is not None:
            emb = np.asarray(embeddings, dtype=np.float32)
            if emb.ndim != 2 or len(emb) != len(self.ids):
                raise ValueError(f"item embeddings have shape {emb.shape}; expected one row "
                                 f"per item ({len(self.ids)})")
            self.embeddings = emb
            self._emb = np.vstack([emb, np.zeros((1, emb.shape[1]), np.float32)])
            # normalised once here rather than for every request's candidates
            self._unit = rerank.unit_rows(self._emb, "item embeddings")
        pop = self._data.get("popularity")
        weight = np.zeros(len(self.ids)) if pop is None else np.array(
            [0 if (v is None or v != v) else v for v in pop[:-1]], dtype=np.float64)
        self._popular = [self.ids[i] for i in np.argsort(-weight, kind="stable")]
        self._key_is_int = bool(self.ids) and isinstance(self.ids[0], (int, np.integer))
        self._last = threading.local()  # per thread: the last tuple of ids and its positions

    @property
    def size(self):
        return len(self.ids)

    def __getstate__(self):         # picklable and copyable: the per-thread memo starts anew
        state = dict(self.__dict__)
        del state["_last"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._last = threading.local()

    @classmethod
    def from_dir(cls, path, key):
        rows = _read_jsonl(os.path.join(path, ITEMS_FILE))
        emb_path = os.path.join(path, ITEM_EMBEDDINGS_FILE)
        emb = np.load(emb_path) if os.path.exists(emb_path) else None
        return cls(rows, key, emb)

    def normalise(self, item_id):
        item_id = super().normalise(item_id)
        if self._key_is_int and isinstance(item_id, str) and item_id.lstrip("-").isdigit():
            return int(item_id)
        return item_id

    def normalise_many(self, item_ids):
        arr = np.asarray(item_ids)
        if arr.dtype == object and self._row_by_bytes:
            values = arr.tolist()
            rows = list(map(self._row_by_bytes.get, values))
            if None not in rows:        # all known ids (bytes): the table's own objects
                return list(map(self.ids.__getitem__, rows))
            return [self.normalise(v) if r is None else self.ids[r]
                    for r, v in zip(rows, values)]
        if arr.dtype == object and not self._key_is_int:
            try:
                return list(map(bytes.decode, arr.tolist()))
            except TypeError:  # not all bytes (e.g. str already)
                pass
        if arr.dtype.kind in "iu" and self._key_is_int:
            return arr.tolist()
        return [self.normalise(i) for i in arr.tolist()]

    def ids_and_rows(self, item_ids):
        """``(ids, rows)`` for ids as Predict returns them (``bytes``): the table's own id
        objects and their rows (int64), from one dictionary pass; None unless every one is
        a known id given as bytes (then :meth:`normalise_many` is the way)."""
        arr = np.asarray(item_ids)
        if arr.dtype != object or not self._row_by_bytes:
            return None
        rows = list(map(self._row_by_bytes.get, arr.tolist()))
        if None in rows:
            return None
        return list(map(self.ids.__getitem__, rows)), np.array(rows, dtype=np.int64)

    def remember(self, item_ids, rows):
        """Note ``rows`` (from :meth:`ids_and_rows`) as the rows of the tuple ``item_ids``, so
        this thread's next :meth:`positions` of that tuple needs no lookup."""
        if type(item_ids) is tuple and len(rows) == len(item_ids):
            rows = np.asarray(rows, dtype=np.int64)
            rows.flags.writeable = False
            self._last.ids = (item_ids, rows)

    def positions(self, item_ids):
        """Row of each id in the table (unknown ids: the trailing "unknown" row), read-only.

        Each thread remembers the last tuple of ids it looked up, so the calls of one request
        that pass the same tuple (``get``, ``wire``, ``vectors``) find their rows once."""
        last = getattr(self._last, "ids", None)
        if last is not None and last[0] is item_ids:    # a tuple cannot have changed since
            return last[1]
        try:
            idx = np.array(list(map(self._pos.__getitem__, item_ids)), dtype=np.int64)
        except KeyError:  # some unknown ids: they point at the trailing "unknown" slot
            unknown, pos = self._unknown, self._pos
            idx = np.array([pos.get(i, unknown) for i in item_ids], dtype=np.int64)
        idx.flags.writeable = False
        if type(item_ids) is tuple:
            self._last.ids = (item_ids, idx)
        return idx

    def get(self, item_ids):
        idx = self.positions(item_ids)
        return {c: col[idx] for c, col in self._data.items()}

    def wire(self, item_ids):
        """The string columns of :meth:`get`, and the ids under the key, as the bytes a
        request sends (None and unknown ids: ``b""``), encoded when the table was loaded."""
        idx = self.positions(item_ids)
        return {c: col[idx] for c, col in self._wire.items()}

    def vectors(self, item_ids):
        if self.embeddings is None:
            return None
        return self._emb[self.positions(item_ids)]

    def unit_vectors(self, item_ids):
        if self.embeddings is None:
            return None
        return self._unit[self.positions(item_ids)]

    def popular(self, n, exclude=()):
        exclude = set(exclude)
        out = []
        for i in self._popular:
            if len(out) >= n:
                break
            if i not in exclude:
                out.append(i)
        return out


class UserStore:
    """User features (and ``seen`` items) by id, from the exported ``users.jsonl``.

    A real feature store implements ``get(user_id) -> dict`` (a fresh dict the caller may
    modify; an unknown user gets ``{key: user_id}``).
    """

    def __init__(self, rows, key):
        self.key = key
        self.rows = {r[key]: r for r in rows}

    @classmethod
    def from_dir(cls, path, key):
        return cls(_read_jsonl(os.path.join(path, USERS_FILE)), key)

    def get(self, user_id) -> dict:
        row = self.rows.get(user_id)
        if row is None and isinstance(user_id, str) and user_id.lstrip("-").isdigit():
            row = self.rows.get(int(user_id))
        return dict(row) if row is not None else {self.key: user_id}
