"""The recommendation client: retrieve -> hydrate -> rank -> re-rank, over TF Serving's gRPC API.

It holds no model code. Everything it sends is shaped by the models' own metadata
(``GetModelMetadata``, read once per model and cached): input names, dtypes and shapes are
read, never hard-coded, and a request that does not fit the signature fails before it is sent
(:class:`RequestError` names the input). It works unchanged against TensorFlow Serving and
against the bundled server.

Pipeline for one user::

    user features (UserStore) + request context
      -> retrieval model (query features, k) -> candidate ids + scores       [stage "retrieval"]
      -> drop seen / blocked items
      -> item features hydrated from the exported item table (ItemStore)     [stage "hydrate"]
      -> one batched Predict on the ranker -> click probabilities            [stage "ranking"]
      -> re-rank (recsys_tf.serving.rerank): calibrate, blend, boosts,       [stage "rerank"]
         freshness, exclusions, per-category caps, MMR diversity, exploration
      -> top k, each with its scores and the reasons for its place

Deadlines: ``timeout`` is the budget of the whole ``recommend`` call. Retrieval must finish
within the first ``stage_shares[0]`` of it, ranking by ``stage_shares[1]``; the rest is kept
for the local re-ranking. Calls are retried with jittered exponential backoff only on
UNAVAILABLE (and RESOURCE_EXHAUSTED with ``retry_resource_exhausted=True``), and never past
the stage's deadline.

Fallbacks: when the ranker fails or runs out of time the answer keeps retrieval order; when
retrieval fails, the most popular unseen items are ranked instead. Degraded answers are flagged
(``Result.degraded``), never raised, unless ``raise_errors=True``.

One gRPC channel (with its stubs) is opened per target and shared by every ``Recommender`` of
the process; a ``Recommender`` is safe to share across threads (``recommend_many`` and the
asyncio ``arecommend`` do).

Example::

    with Recommender("127.0.0.1:8500", tables="saved_models/two_tower/1/assets.extra") as rec:
        result = rec.recommend("u17", k=10, diversity=0.3)
        for item in result.items:
            print(item.item_id, item.final_score, item.reasons)
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import os
import random
import threading
import time
from collections.abc import Mapping
from concurrent import futures

import grpc
import numpy as np

from recsys_tf.serving import rerank
from recsys_tf.serving.grpc_client import ServingClient

__all__ = [
    "Recommender", "Result", "Recommendation", "Rules", "Boost", "ItemStore",
    "InMemoryItemStore", "UserStore", "RequestError", "DeadlineExceeded",
]

log = logging.getLogger("recsys_tf.client")

DEFAULT_SIGNATURE = "serving_default"


# ------------------------------------------------------------------------------ errors
class RequestError(ValueError):
    """A request that does not fit the model's signature; raised before anything is sent.

    ``model`` and ``field`` (the input's name, or None) say where.
    """

    code = "INVALID_REQUEST"

    def __init__(self, model, field, message):
        where = f"input {field!r}: " if field is not None else ""
        super().__init__(f"{model}: {where}{message}")
        self.model, self.field = model, field


class DeadlineExceeded(TimeoutError):
    """A stage's share of the deadline ran out before a (further) call could be made."""

    code = "DEADLINE_EXCEEDED"


_FAILURES = (grpc.RpcError, RequestError, DeadlineExceeded)


def _error_code(err) -> str:
    if isinstance(err, grpc.RpcError) and callable(getattr(err, "code", None)):
        return err.code().name
    return getattr(err, "code", None) or type(err).__name__


def _error_text(err) -> str:
    if isinstance(err, grpc.RpcError) and callable(getattr(err, "details", None)):
        return f"{_error_code(err)}: {err.details()}"
    return f"{_error_code(err)}: {err}"


# ------------------------------------------------------------------------------ channels
class _Channels:
    """One ``ServingClient`` (a long-lived channel and its stubs) per target, shared by every
    ``Recommender`` of the process and closed when the last one is."""

    def __init__(self):
        self._lock = threading.Lock()
        self._entries = {}  # target -> [client, users]

    def acquire(self, target, max_message_mb):
        with self._lock:
            entry = self._entries.get(target)
            if entry is None:
                entry = self._entries[target] = [
                    ServingClient(target, max_message_mb=max_message_mb), 0]
            entry[1] += 1
            return entry[0]

    def release(self, client):
        with self._lock:
            for target, entry in list(self._entries.items()):
                if entry[0] is client:
                    entry[1] -= 1
                    if entry[1] <= 0:
                        del self._entries[target]
                        client.close()
                    return

    def open_targets(self):
        with self._lock:
            return {t: e[1] for t, e in self._entries.items()}


_CHANNELS = _Channels()


# ------------------------------------------------------------------------------ stores
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
    cannot tell). ``get``, ``popular`` are required; ``vectors`` (item embeddings for MMR)
    and ``normalise`` have defaults.
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
        self.embeddings = None
        if embeddings is not None:
            emb = np.asarray(embeddings, dtype=np.float32)
            if emb.ndim != 2 or len(emb) != len(self.ids):
                raise ValueError(f"item embeddings have shape {emb.shape}; expected one row "
                                 f"per item ({len(self.ids)})")
            self.embeddings = emb
            self._emb = np.vstack([emb, np.zeros((1, emb.shape[1]), np.float32)])
        pop = self._data.get("popularity")
        weight = np.zeros(len(self.ids)) if pop is None else np.array(
            [0 if (v is None or v != v) else v for v in pop[:-1]], dtype=np.float64)
        self._popular = [self.ids[i] for i in np.argsort(-weight, kind="stable")]
        self._key_is_int = bool(self.ids) and isinstance(self.ids[0], (int, np.integer))

    @property
    def size(self):
        return len(self.ids)

    @classmethod
    def from_dir(cls, path, key):
        rows = _read_jsonl(os.path.join(path, "items.jsonl"))
        emb_path = os.path.join(path, "item_embeddings.npy")
        emb = np.load(emb_path) if os.path.exists(emb_path) else None
        return cls(rows, key, emb)

    def normalise(self, item_id):
        item_id = super().normalise(item_id)
        if self._key_is_int and isinstance(item_id, str) and item_id.lstrip("-").isdigit():
            return int(item_id)
        return item_id

    def normalise_many(self, item_ids):
        arr = np.asarray(item_ids)
        if arr.dtype == object and not self._key_is_int:
            try:
                return [b.decode() for b in arr.tolist()]
            except AttributeError:
                pass
        if arr.dtype.kind in "iu" and self._key_is_int:
            return arr.tolist()
        return [self.normalise(i) for i in arr.tolist()]

    def positions(self, item_ids):
        try:
            return np.array(list(map(self._pos.__getitem__, item_ids)), dtype=np.int64)
        except KeyError:  # some unknown ids: they point at the trailing "unknown" slot
            unknown, pos = self._unknown, self._pos
            return np.array([pos.get(i, unknown) for i in item_ids], dtype=np.int64)

    def get(self, item_ids):
        idx = self.positions(item_ids)
        return {c: col[idx] for c, col in self._data.items()}

    def vectors(self, item_ids):
        if self.embeddings is None:
            return None
        return self._emb[self.positions(item_ids)]

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
        return cls(_read_jsonl(os.path.join(path, "users.jsonl")), key)

    def get(self, user_id) -> dict:
        row = self.rows.get(user_id)
        if row is None and isinstance(user_id, str) and user_id.lstrip("-").isdigit():
            row = self.rows.get(int(user_id))
        return dict(row) if row is not None else {self.key: user_id}


# ------------------------------------------------------------------------------ rules / results
@dataclasses.dataclass(frozen=True)
class Boost:
    """A business-rule boost: ``score * factor + add`` for the matching candidates.

    A candidate matches when its id is in ``items`` or its item-table ``column`` value is in
    ``values``. ``factor < 1`` or ``add < 0`` demotes.
    """

    name: str
    factor: float = 1.0
    add: float = 0.0
    items: tuple = ()
    column: str | None = None
    values: tuple = ()

    def mask(self, ids, hydrated):
        m = np.zeros(len(ids), dtype=bool)
        if self.items:
            m |= ~rerank.filter_mask(ids, list(self.items))
        if self.column is not None:
            col = hydrated.get(self.column)
            if col is None:
                raise KeyError(f"boost {self.name!r}: the item table has no column "
                               f"{self.column!r}")
            m |= ~rerank.filter_mask(_hashable(col), list(self.values))
        return m


@dataclasses.dataclass(frozen=True)
class Rules:
    """Business rules applied to every request (``recommend(rules=...)`` overrides them).

    Args:
      exclude: item ids never to return.
      exclude_values: ``{item column: values}`` never to return, e.g. ``{"category": ["c3"]}``.
      category_cap: at most this many items per category in the answer: an int, or
        ``{category: int}`` (unlisted categories uncapped).
      cap_column: the item column the caps count (default: the table's category feature).
      boosts: :class:`Boost` rules, applied in order.
      freshness_column, freshness_half_life, freshness_strength: a recency boost
        ``x (1 + strength * 0.5 ** (age / half_life))`` from an item-table age column.
      calibration: ``(temperature, bias)`` applied to the ranker's probabilities.
    """

    exclude: tuple = ()
    exclude_values: Mapping = dataclasses.field(default_factory=dict)
    category_cap: object = None
    cap_column: str | None = None
    boosts: tuple = ()
    freshness_column: str | None = None
    freshness_half_life: float = 30.0
    freshness_strength: float = 0.0
    calibration: tuple | None = None


@dataclasses.dataclass
class Recommendation:
    item_id: object
    final_score: float
    retrieval_score: float | None
    ranking_score: float | None
    category: object = None
    reasons: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Result:
    """One answer. ``degraded`` is None or says which fallback was used and why;
    ``timings_ms`` has one entry per stage (``user``, ``retrieval``, ``hydrate``, ``ranking``,
    ``rerank``, ``total``, and the client-side request building inside the two remote stages
    as ``retrieval_build`` / ``ranking_build``); ``models`` the served versions that answered.
    """

    user_id: object
    items: list
    degraded: str | None = None
    timings_ms: dict = dataclasses.field(default_factory=dict)
    notes: list = dataclasses.field(default_factory=list)
    models: dict = dataclasses.field(default_factory=dict)
    failures: dict = dataclasses.field(default_factory=dict)
    retries: int = 0
    deadline_ms: float | None = None

    def to_dict(self):
        return _plain(dataclasses.asdict(self))


def _plain(x):
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, bytes):
        return x.decode()
    if isinstance(x, float) and x != x:
        return None
    return x


def _hashable(values):
    """An array of category-like values that filter_mask / mmr can hash (lists -> tuples)."""
    arr = np.asarray(values, dtype=object) if not isinstance(values, np.ndarray) else values
    if arr.dtype == object and list in set(map(type, arr.tolist())):
        arr = np.array([tuple(v) if isinstance(v, list) else v for v in arr], dtype=object)
    return arr


# ------------------------------------------------------------------------------ requests
def _to_bytes(value):
    if isinstance(value, bytes):
        return value
    if value is None or (isinstance(value, float) and value != value):
        return b""
    if isinstance(value, np.generic):
        value = value.item()
    return str(value).encode()


def _string_column(model, name, values):
    """An object array of str/bytes the codec takes as it is; None -> "" (unknown)."""
    arr = values if isinstance(values, np.ndarray) and values.dtype == object else \
        np.asarray(values, dtype=object)
    if arr.ndim != 1:
        raise RequestError(model, name, f"expects one value per row, got shape {arr.shape}")
    if set(map(type, arr.tolist())) <= {str}:
        return arr
    return np.array([_to_bytes(v) for v in arr], dtype=object)


def _numeric(model, name, values, dtype):
    try:
        if dtype.kind == "f":
            if isinstance(values, np.ndarray) and values.dtype.kind in "fiu":
                return values.astype(dtype, copy=False)
            return np.array([np.nan if v is None else v for v in values], dtype=dtype)
        if isinstance(values, np.ndarray) and values.dtype.kind in "iub":
            return values.astype(dtype, copy=False)
        out = np.array([0 if v is None or (isinstance(v, float) and v != v)
                        else int(v) if isinstance(v, (str, bytes)) else v for v in values])
        if out.size and out.dtype.kind not in "iub":
            raise ValueError(f"values of kind {out.dtype} are not integers")
        return out.astype(dtype)
    except (TypeError, ValueError) as e:
        sample = next((v for v in values if v is not None), None)
        raise RequestError(model, name, f"cannot convert {sample!r} to {dtype} ({e})") from None


def _is_sequence(v):
    return isinstance(v, (list, tuple, np.ndarray))


def _padded(model, name, values, rows, width, dtype):
    """``[rows, width]`` from one list per row (or one list for all rows); the last ``width``
    values are kept (histories are oldest first), the rest padded with "" / 0."""
    is_str = dtype == "string"
    pad = b"" if is_str else 0
    lens = [len(v) for v in values if _is_sequence(v)]
    if width is None or width < 0:
        width = max(lens + [1])
    out = np.empty((rows, width), dtype=object) if is_str else np.zeros((rows, width), dtype)
    if is_str:
        out[:] = pad

    def row(v):
        if v is None:
            return []
        if not _is_sequence(v):
            raise RequestError(model, name, f"expects a sequence per row, got {v!r:.60}")
        v = list(v)[-width:]
        return [_to_bytes(x) for x in v] if is_str else v

    if len(values) == 1 and rows != 1:  # one value for every row: convert it once
        r = row(values[0])
        if r:
            try:
                out[:, :len(r)] = np.asarray(r, dtype=object if is_str else dtype)
            except (TypeError, ValueError) as e:
                raise RequestError(model, name, f"cannot convert {r[:3]!r} to {dtype} ({e})") \
                    from None
        return out
    for i, v in enumerate(values):
        r = row(v)
        if r:
            try:
                out[i, :len(r)] = r
            except (TypeError, ValueError) as e:
                raise RequestError(model, name, f"cannot convert {r[:3]!r} to {dtype} ({e})") \
                    from None
    return out


def _input(model, name, spec, values, rows, broadcast):
    """One signature input from ``values`` (``rows`` of them, or one to repeat when
    ``broadcast``), cast to the signature's dtype and shaped to its rank."""
    dtype, shape = spec["dtype"], spec["shape"]
    if isinstance(dtype, str) and dtype != "string":
        raise RequestError(model, name, f"dtype {dtype} is not supported by this client")
    rank = 1 if shape is None else len(shape)
    if rank == 0:
        v = values[0] if broadcast else values
        if _is_sequence(v):
            raise RequestError(model, name, f"expects one scalar, got {v!r:.60}")
        if dtype == "string":
            return np.array(_to_bytes(v), dtype=object)
        return _numeric(model, name, [v], dtype).reshape(())
    if rank == 1:
        if broadcast:
            v = values[0]
            if _is_sequence(v):
                raise RequestError(model, name, f"expects one value per row, got the sequence "
                                   f"{v!r:.60}")
            if dtype == "string":
                return np.full(rows, _to_bytes(v), dtype=object)
            return np.full(rows, _numeric(model, name, [v], dtype)[0], dtype=dtype)
        if len(values) != rows:
            raise RequestError(model, name, f"has {len(values)} values for {rows} rows")
        if dtype == "string":
            return _string_column(model, name, values)
        return _numeric(model, name, values, dtype)
    if rank == 2:
        width = shape[1] if shape is not None else None
        return _padded(model, name, values if not broadcast else [values[0]], rows, width,
                       dtype)
    raise RequestError(model, name, f"rank {rank} inputs (shape {shape}) are not supported")


def _check(model, name, spec, array, rows):
    """The built array fits the signature (dtype, rank, fixed sizes)."""
    dtype, shape = spec["dtype"], spec["shape"]
    ok_dtype = array.dtype.kind in "OSU" if dtype == "string" else array.dtype == dtype
    if not ok_dtype:
        raise RequestError(model, name, f"dtype {array.dtype} does not match the signature's "
                           f"{dtype}")
    if shape is None:
        return
    if array.ndim != len(shape):
        raise RequestError(model, name, f"rank {array.ndim} does not match the signature's "
                           f"shape {shape}")
    for axis, (got, want) in enumerate(zip(array.shape, shape)):
        if want is not None and want >= 0 and got != want:
            raise RequestError(model, name, f"size {got} on axis {axis} does not match the "
                               f"signature's shape {shape}")


def _summary(inputs):
    """A one-line description of request tensors for the debug log."""
    parts = []
    for name, a in inputs.items():
        a = np.asarray(a)
        first = a.reshape(-1)[:1].tolist()
        parts.append(f"{name}:{'string' if a.dtype == object else a.dtype}{list(a.shape)}"
                     f"={first[0] if first else None!r}")
    return ", ".join(parts)


@dataclasses.dataclass
class _Call:
    """Per-request bookkeeping shared by the stages (one per ``recommend`` call)."""

    debug: bool
    retries: int = 0
    versions: dict = dataclasses.field(default_factory=dict)   # stage -> served version
    build_ms: dict = dataclasses.field(default_factory=dict)   # stage -> request building


def _kind(dtype):
    """numpy kind of a signature dtype; "T" for strings, "?" for dtypes numpy cannot hold."""
    if dtype == "string":
        return "T"
    if isinstance(dtype, str):
        return "?"
    return np.dtype(dtype).kind


@dataclasses.dataclass
class _Cached:
    signature: dict
    fetched: float


# ------------------------------------------------------------------------------ the client
class Recommender:
    """Multi-stage recommendations from served models.

    Args:
      target: ``host:port`` of TF Serving or the bundled server.
      tables: directory with the exported ``items.jsonl`` / ``users.jsonl`` /
        ``item_embeddings.npy`` and ``model_card.json`` (a retrieval export's ``assets.extra``).
        May be None when both stores are given.
      retrieval_model: served retrieval model name (default ``"two_tower"``; e.g.
        ``"two_tower_scann"`` for a ScaNN index). A retrieval signature that takes no scalar
        ``k`` input is fine (fixed k); one that returns only an embedding is searched locally
        over the item table's embeddings.
      ranker: served ranker name (default ``"deepfm"``); None skips ranking.
      ranker_version, ranker_label: pin a ranker version or label (canaries).
      timeout: overall deadline per ``recommend`` call in seconds (default 2.0).
      item_store, user_store: replace the in-memory tables (e.g. a real feature store).
      raise_errors: raise instead of degrading (default False).
      client: a ``ServingClient``-like object to use instead of the shared channel (tests,
        in-process serving); it is not closed by ``close()``.
      ranker_target: ``host:port`` of the ranker when it is served elsewhere.
      rules: default :class:`Rules`.
      stage_shares: ``(retrieval, ranking)``: the share of ``timeout`` by whose end each stage
        must be done (default ``(0.4, 0.95)``; the rest is kept for re-ranking).
      max_attempts: calls per stage at most (1 = no retries; default 3).
      backoff: ``(first, max)`` retry delay in seconds, doubled per retry, jittered (the
        delay is drawn from ``[d/2, d]``).
      retry_resource_exhausted: also retry RESOURCE_EXHAUSTED (default: UNAVAILABLE only).
      metadata_ttl: seconds before a cached signature is re-read to notice a new version
        (None: only when a request is rejected). Default 60.
      strict: fail (RequestError) when a signature input has no value for the user, instead
        of sending it as unknown (the default).
      diversity_by: ``"embeddings"``, ``"category"`` or ``"auto"`` (embeddings when the
        table has them).
      ranker_output: the ranker's output to read (default: its only float output).
      retrieval_signature: the retrieval signature (default ``serving_default``).
      debug: log every request (inputs, shapes, first values) and response at INFO on the
        ``recsys_tf.client`` logger.
      max_workers: threads of ``recommend_many`` / ``arecommend``.
      seed: seeds the retry jitter.
      max_retrieval_k: the most candidates the retrieval model may be asked for (default:
        the export's ``index_k`` when its model card has one, else the item table's size).
    """

    def __init__(self, target, tables, retrieval_model="two_tower", ranker="deepfm",
                 ranker_version=None, ranker_label=None, timeout=2.0, item_store=None,
                 user_store=None, raise_errors=False, client=None, *, ranker_target=None,
                 rules=None, stage_shares=(0.4, 0.95), max_attempts=3, backoff=(0.005, 0.1),
                 retry_resource_exhausted=False, metadata_ttl=60.0, strict=False,
                 diversity_by="auto", ranker_output=None,
                 retrieval_signature=DEFAULT_SIGNATURE, debug=False, max_workers=4,
                 max_message_mb=64, seed=None, max_retrieval_k=None):
        card = {}
        if tables is not None:
            with open(os.path.join(tables, "model_card.json")) as f:
                card = json.load(f)
        elif item_store is None or user_store is None:
            raise ValueError("give tables=, or both item_store= and user_store=")
        fs = card.get("features", {})
        self.item_key = fs.get("item_id") or item_store.key
        self.user_key = fs.get("user_id") or user_store.key
        self.category = card.get("category_feature")
        # a ScaNN export answers at most its index_k items per request
        self.max_retrieval_k = max_retrieval_k or card.get("index_k")
        self.items = item_store or InMemoryItemStore.from_dir(tables, self.item_key)
        self.users = user_store or UserStore.from_dir(tables, self.user_key)
        if ranker_version is not None and ranker_label is not None:
            raise ValueError("give ranker_version or ranker_label, not both")
        if not (0 < stage_shares[0] <= stage_shares[1] <= 1):
            raise ValueError(f"stage_shares must be 0 < retrieval <= ranking <= 1, got "
                             f"{stage_shares}")
        if diversity_by not in ("auto", "embeddings", "category"):
            raise ValueError(f"diversity_by must be auto, embeddings or category, got "
                             f"{diversity_by!r}")
        self.target = target
        self._own = client is None
        self.client = client or _CHANNELS.acquire(target, max_message_mb)
        if client is None and ranker_target and ranker_target != target:
            self.ranker_client = _CHANNELS.acquire(ranker_target, max_message_mb)
            self._own_ranker = True
        else:
            self.ranker_client, self._own_ranker = self.client, False
        self.retrieval_model, self.ranker = retrieval_model, ranker
        self.retrieval_signature = retrieval_signature
        self.ranker_version, self.ranker_label = ranker_version, ranker_label
        self.ranker_output = ranker_output
        self.timeout, self.raise_errors = float(timeout), bool(raise_errors)
        self.rules = rules or Rules()
        self.stage_shares = tuple(float(s) for s in stage_shares)
        self.max_attempts = max(1, int(max_attempts))
        self.backoff = (float(backoff[0]), float(backoff[1]))
        self.retry_codes = {grpc.StatusCode.UNAVAILABLE}
        if retry_resource_exhausted:
            self.retry_codes.add(grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.metadata_ttl = metadata_ttl
        self.strict, self.diversity_by, self.debug = bool(strict), diversity_by, bool(debug)
        self.max_workers = int(max_workers)
        self.min_call_s = 0.0005  # no call is started with less time than this left
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._signatures = {}  # (which, model, signature, version) -> _Cached
        self._health = {}  # stage -> error code of its last failure, None once it answers
        self._executor = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self):
        with self._lock:
            if self._closed:
                return
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        if self._own:
            _CHANNELS.release(self.client)
        if self._own_ranker:
            _CHANNELS.release(self.ranker_client)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _pool(self):
        with self._lock:
            if self._closed:
                raise RuntimeError("this Recommender is closed")
            if self._executor is None:
                self._executor = futures.ThreadPoolExecutor(
                    max_workers=self.max_workers, thread_name_prefix="recommender")
            return self._executor

    # -- calls -------------------------------------------------------------------------------
    def _call(self, what, fn, deadline, state):
        """``fn(timeout)`` with retries on the retryable codes, never past ``deadline``."""
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining < self.min_call_s:
                raise DeadlineExceeded(f"{what}: the stage's deadline has passed"
                                       + (f" after {attempt} attempt(s)" if attempt else ""))
            try:
                return fn(remaining)
            except grpc.RpcError as e:
                attempt += 1
                if e.code() not in self.retry_codes or attempt >= self.max_attempts:
                    raise
                d = min(self.backoff[1], self.backoff[0] * 2 ** (attempt - 1))
                delay = d / 2 + self._rng.uniform(0, d / 2)
                if time.monotonic() + delay + self.min_call_s >= deadline:
                    raise
                if state.debug:
                    log.info("%s: %s, retry %d in %.1f ms", what, _error_code(e), attempt,
                             delay * 1e3)
                state.retries += 1
                time.sleep(delay)

    def _signature(self, which, client, model, version, signature, deadline, state,
                   force=False):
        """The model's signature, from GetModelMetadata once and then from the cache; re-read
        after ``metadata_ttl`` (or with ``force``) and a version change logged."""
        key = (which, model, signature, version)
        with self._lock:
            cached = self._signatures.get(key)
        now = time.monotonic()
        fresh = cached is not None and not force and (
            self.metadata_ttl is None or now - cached.fetched < self.metadata_ttl)
        if fresh:
            return cached.signature
        try:
            sig = self._call(f"GetModelMetadata {model}", lambda t: client.signature(
                model, signature, version=version, refresh=cached is not None or force,
                timeout=t),
                deadline, state)
        except ValueError as e:  # the model has no such signature
            raise RequestError(model, None, str(e)) from None
        except _FAILURES:
            if cached is not None and not force:  # keep serving with what we know
                return cached.signature
            raise
        if cached is not None and cached.signature.get("version") != sig.get("version"):
            log.info("model %s: version %s -> %s, signature re-read", model,
                     cached.signature.get("version"), sig.get("version"))
        with self._lock:
            self._signatures[key] = _Cached(sig, time.monotonic())
        return sig

    def _predict(self, which, client, model, build, deadline, state, version=None, label=None,
                 signature=DEFAULT_SIGNATURE, outputs=None):
        """Signature -> request (``build(sig)``) -> Predict; when the server rejects the request
        (INVALID_ARGUMENT / FAILED_PRECONDITION) and the signature changed meanwhile (a new
        version), rebuild once with the new one."""
        sig = self._signature(which, client, model, version, signature, deadline, state)
        for attempt in (0, 1):
            t = time.perf_counter()
            inputs, extra = build(sig)
            build_ms = (time.perf_counter() - t) * 1e3
            names = outputs(sig) if outputs else None
            if state.debug:
                log.info("Predict %s (version=%s label=%s signature=%s) outputs=%s inputs: %s",
                         model, version, label, signature, names, _summary(inputs))
            try:
                out = self._call(f"Predict {model}", lambda t: client.predict(
                    model, inputs, signature=signature, version=version, label=label,
                    output_filter=names, timeout=t), deadline, state)
            except grpc.RpcError as e:
                if attempt or e.code() not in (grpc.StatusCode.INVALID_ARGUMENT,
                                               grpc.StatusCode.FAILED_PRECONDITION):
                    raise
                try:
                    new = self._signature(which, client, model, version, signature, deadline,
                                          state, force=True)
                except _FAILURES:
                    raise e from None
                if new == sig:
                    raise
                sig = new
                continue
            if state.debug:
                log.info("Predict %s answered: %s", model, _summary(out))
            return out, sig, extra, build_ms

    def _build(self, model, sig, user, rows, items=None, skip=()):
        """Request inputs for a signature: item columns first, then user/context values.

        Returns ``(inputs, missing)``; inputs the user has no value for are sent as unknown
        ("" / NaN / 0) and listed in ``missing`` (or raise with ``strict``).
        """
        out, missing = {}, []
        for name, spec in sig["inputs"].items():
            if name in skip:
                continue
            if items is not None and name in items:
                values, broadcast = items[name], False
            elif name in user:
                values, broadcast = [user[name]], True
            else:
                if self.strict:
                    raise RequestError(model, name, "no value for this input (strict mode)")
                missing.append(name)
                values, broadcast = [None], True
            out[name] = arr = _input(model, name, spec, values, rows, broadcast)
            _check(model, name, spec, arr, rows)
        return out, missing

    # -- stages ------------------------------------------------------------------------------
    def _retrieval_roles(self, sig):
        ins, outs = sig["inputs"], sig["outputs"]
        k_name = next((n for n, s in ins.items()
                       if s["shape"] == [] and _kind(s["dtype"]) in "iu"), None)
        ids = next((n for n, s in outs.items() if _kind(s["dtype"]) in "Tiu"), None)
        floats = [n for n, s in outs.items() if _kind(s["dtype"]) == "f"]
        if ids is not None and floats:
            return "search", k_name, ids, floats[0]
        if ids is None and len(floats) == 1:
            return "embedding", None, None, floats[0]
        raise RequestError(self.retrieval_model, None, f"cannot tell ids and scores apart "
                           f"among the outputs {sorted(outs)}")

    def retrieve(self, user, n, deadline, state=None):
        """Candidate ids (table keys) and scores, best first; and the inputs sent as unknown."""
        state = state or _Call(self.debug)
        info = {}

        def build(sig):
            mode, k_name, _, _ = self._retrieval_roles(sig)
            inputs, missing = self._build(self.retrieval_model, sig, user, 1,
                                          skip=(k_name,) if k_name else ())
            if k_name:
                inputs[k_name] = np.array(n, dtype=sig["inputs"][k_name]["dtype"])
            info["mode"] = mode
            return inputs, missing

        def outputs(sig):
            mode, _, ids, scores = self._retrieval_roles(sig)
            return [ids, scores] if mode == "search" else [scores]

        out, sig, missing, build_ms = self._predict(
            "retrieval", self.client, self.retrieval_model, build, deadline, state,
            signature=self.retrieval_signature, outputs=outputs)
        mode, _, ids_name, scores_name = self._retrieval_roles(sig)
        if mode == "embedding":
            ids, scores = self._search(out[scores_name].reshape(-1), n)
        else:
            ids = self.items.normalise_many(np.asarray(out[ids_name]).reshape(-1)[:n])
            scores = np.asarray(out[scores_name], dtype=np.float64).reshape(-1)[:n]
        state.versions["retrieval"] = sig.get("version")
        state.build_ms["retrieval"] = build_ms
        return ids, scores, missing

    def _search(self, query, n):
        """Exact top-n over the item table's embeddings (for an embedding-only signature)."""
        emb = getattr(self.items, "embeddings", None)
        if emb is None:
            raise RequestError(self.retrieval_model, None, "the signature returns an embedding "
                               "but the item store has no embeddings to search")
        scores = emb @ query.astype(np.float32)
        n = min(n, len(scores))
        top = np.argpartition(-scores, n - 1)[:n] if n < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        return [self.items.ids[i] for i in top], scores[top].astype(np.float64)

    def _score_output(self, sig):
        if self.ranker_output is not None:
            if self.ranker_output not in sig["outputs"]:
                raise RequestError(self.ranker, None, f"no output {self.ranker_output!r}; "
                                   f"outputs are {sorted(sig['outputs'])}")
            return self.ranker_output
        floats = [n for n, s in sig["outputs"].items() if _kind(s["dtype"]) == "f"]
        if len(floats) != 1:
            raise RequestError(self.ranker, None, f"cannot tell which output is the score among "
                               f"{sorted(sig['outputs'])}; pass ranker_output=")
        return floats[0]

    def rank(self, user, ids, hydrated, deadline, state=None):
        """Ranker scores for the candidates (one batched Predict); and the unknown inputs."""
        state = state or _Call(self.debug)
        items = dict(hydrated)
        items[self.item_key] = ids

        def build(sig):
            return self._build(self.ranker, sig, user, len(ids), items=items)

        out, sig, missing, build_ms = self._predict(
            "ranker", self.ranker_client, self.ranker, build, deadline, state,
            version=self.ranker_version, label=self.ranker_label,
            outputs=lambda s: [self._score_output(s)])
        scores = np.asarray(out[self._score_output(sig)], dtype=np.float64).reshape(-1)
        if len(scores) != len(ids):
            raise RequestError(self.ranker, None, f"returned {len(scores)} scores for "
                               f"{len(ids)} candidates")
        state.versions["ranking"] = None if self.ranker_label else (
            self.ranker_version if self.ranker_version is not None else sig.get("version"))
        state.build_ms["ranking"] = build_ms
        return scores, missing

    def _report(self, stage, err, fallback=None):
        """Log a stage going down (once per error code) and coming back, not every request."""
        code = None if err is None else _error_code(err)
        with self._lock:
            before = self._health.get(stage)
            if before == code:
                return
            self._health[stage] = code
        if code is not None:
            log.warning("%s failing (%s), %s until it answers again", stage, _error_text(err),
                        fallback)
        elif before is not None:
            log.warning("%s answers again", stage)

    # -- the pipeline ------------------------------------------------------------------------
    def recommend(self, user_id, k=10, context=None, n_candidates=100, diversity=0.0,
                  blend_weight=0.0, exclude=(), filter_seen=True, *, rules=None, explore=0.0,
                  seed=None, timeout=None, debug=None):
        """Top ``k`` items for ``user_id`` (see the module docstring for the stages).

        Args:
          context: request-time feature values (e.g. ``{"hour": "20", "device": "mobile"}``),
            overriding the stored user features of the same name.
          n_candidates: how many candidates are ranked (retrieval asks for this many plus
            the items that will be filtered out).
          diversity: MMR trade-off (lambda) in [0, 1] (0 = pure relevance).
          blend_weight: weight of the retrieval score in the final score (0 = ranker only).
          exclude: item ids never to return (blocked items); ``filter_seen`` also drops the
            user's known interactions.
          rules: :class:`Rules` for this request (default: the constructor's).
          explore: softmax-sampling temperature on the final score scale (0 = none): the
            order is drawn by seeded Gumbel top-k sampling (then diversified by MMR).
          seed: seeds the exploration.
          timeout: this call's deadline in seconds (default: the constructor's).
          debug: log this call's requests (default: the constructor's ``debug``).
        """
        start = time.monotonic()
        budget = self.timeout if timeout is None else float(timeout)
        r_deadline = start + budget * self.stage_shares[0]
        k_deadline = start + budget * self.stage_shares[1]
        rules = self.rules if rules is None else rules
        state = _Call(self.debug if debug is None else bool(debug))
        timings, notes, failures, models = {}, [], {}, {}
        degraded = []

        t = time.monotonic()
        user = self.users.get(user_id)
        user.update(context or {})
        banned = {_plain(i) for i in exclude} | {_plain(i) for i in rules.exclude}
        if filter_seen:
            banned |= {_plain(i) for i in user.get("seen") or ()}
        timings["user"] = (time.monotonic() - t) * 1e3

        # retrieval -> candidates (or the most popular items)
        t = time.monotonic()
        retrieved = False
        try:
            n = max(1, n_candidates + len(banned))  # enough to survive the seen-item filter
            if self.items.size:
                n = min(n, self.items.size)     # an index holds no more items than the table
            if self.max_retrieval_k:
                n = min(n, int(self.max_retrieval_k))
            ids, r_scores, missing = self.retrieve(user, n, r_deadline, state)
            retrieved = True
            self._report("retrieval", None)
            models["retrieval"] = {"name": self.retrieval_model,
                                   "version": state.versions.get("retrieval")}
            timings["retrieval_build"] = state.build_ms["retrieval"]
            if missing:
                notes.append(f"retrieval inputs not known for this user, sent as unknown: "
                             f"{missing}")
        except _FAILURES as e:
            if self.raise_errors:
                raise
            failures["retrieval"] = _error_text(e)
            degraded.append(f"retrieval failed ({_error_code(e)}): most popular items")
            self._report("retrieval", e, "answering with the most popular items")
            ids = self.items.popular(n_candidates, exclude=banned)
            r_scores = None
        timings["retrieval"] = (time.monotonic() - t) * 1e3

        # seen / blocked items
        if retrieved:
            keep = np.fromiter((i not in banned for i in ids), dtype=bool, count=len(ids))
            ids = [i for i, kp in zip(ids, keep) if kp][:n_candidates]
            r_scores = r_scores[keep][:n_candidates]
        else:  # popularity order stands in for retrieval scores
            r_scores = 1.0 - np.arange(len(ids), dtype=np.float64) / max(len(ids), 1)

        # hydrate, then attribute exclusions (business rules)
        t = time.monotonic()
        hydrated = self.items.get(ids)
        if rules.exclude_values and ids:
            keep = np.ones(len(ids), dtype=bool)
            for column, values in rules.exclude_values.items():
                if column not in hydrated:
                    raise KeyError(f"exclude_values: the item table has no column {column!r}")
                keep &= rerank.filter_mask(_hashable(hydrated[column]), list(values))
            if not keep.all():
                idx = np.flatnonzero(keep)
                ids = [ids[i] for i in idx]
                r_scores = r_scores[idx]
                hydrated = {c: np.asarray(v, dtype=object)[idx] if not isinstance(v, np.ndarray)
                            else v[idx] for c, v in hydrated.items()}
        timings["hydrate"] = (time.monotonic() - t) * 1e3

        # ranking
        t = time.monotonic()
        p_scores = None
        if self.ranker and ids:
            try:
                p_scores, missing = self.rank(user, ids, hydrated, k_deadline, state)
                self._report("ranking", None)
                models["ranker"] = {"name": self.ranker, "version": state.versions.get("ranking")}
                if self.ranker_label:
                    models["ranker"]["label"] = self.ranker_label
                timings["ranking_build"] = state.build_ms["ranking"]
                if missing:
                    notes.append(f"ranker inputs not known, sent as unknown: {missing}")
            except _FAILURES as e:
                if self.raise_errors:
                    raise
                failures["ranking"] = _error_text(e)
                fallback = "retrieval order" if retrieved else "popularity order"
                degraded.append(f"ranker failed ({_error_code(e)}): {fallback}")
                self._report("ranking", e, f"answering in {fallback}")
        timings["ranking"] = (time.monotonic() - t) * 1e3

        t = time.monotonic()
        items = self._rerank(ids, r_scores, p_scores, hydrated, retrieved, k, diversity,
                             blend_weight, rules, explore, seed)
        timings["rerank"] = (time.monotonic() - t) * 1e3
        timings["total"] = (time.monotonic() - start) * 1e3
        if state.debug:
            log.info("recommend %r: %d items%s; timings ms %s", user_id, len(items),
                     f" [degraded: {'; '.join(degraded)}]" if degraded else "",
                     {s: round(v, 2) for s, v in timings.items()})
        return Result(user_id=user_id, items=items, degraded="; ".join(degraded) or None,
                      timings_ms=timings, notes=notes, models=models, failures=failures,
                      retries=state.retries, deadline_ms=budget * 1e3)

    def _rerank(self, ids, r_scores, p_scores, hydrated, retrieved, k, diversity,
                blend_weight, rules, explore, seed):
        """Scores -> order -> the top k with their reasons (reasons are built for those only)."""
        if not ids:
            return []
        r_scores = np.asarray(r_scores, dtype=np.float64)
        # relevance: ranker (calibrated, blended) or the candidates' own order
        calibrated = blended = None
        if p_scores is None:
            final = r_scores
        else:
            final = p_scores
            if rules.calibration is not None:
                temperature, bias = rules.calibration
                final = calibrated = rerank.calibrate(final, temperature=temperature, bias=bias)
            if blend_weight:
                final = blended = rerank.blend(r_scores, final, weight=blend_weight)

        # business rules: boosts, then freshness (each kept as a per-item delta)
        deltas = []
        for b in rules.boosts:
            before = final
            final = rerank.boost(final, b.mask(ids, hydrated), factor=b.factor, add=b.add)
            deltas.append((b.name, final - before))
        fresh = None
        if rules.freshness_column and rules.freshness_strength:
            if rules.freshness_column not in hydrated:
                raise KeyError(f"freshness: the item table has no column "
                               f"{rules.freshness_column!r}")
            age = np.array([np.nan if v is None else v for v in hydrated[rules.freshness_column]],
                           dtype=np.float64)
            before = final
            final = rerank.freshness_boost(final, age, rules.freshness_half_life,
                                           rules.freshness_strength)
            fresh = final - before

        # ordering: exploration, MMR diversity, per-category caps
        keys = rerank.perturb(final, explore, seed) if explore else final
        cats = hydrated.get(self.category) if self.category else None
        cats_h = None if cats is None else _hashable(cats)
        vecs = None
        if diversity and self.diversity_by != "category":
            vecs = self.items.vectors(ids)
            if vecs is None and self.diversity_by == "embeddings":
                raise ValueError("diversity_by='embeddings' but the item store has no vectors")
        sim_cats = cats_h if vecs is None else None
        if diversity and vecs is None and sim_cats is None:
            raise ValueError("diversity needs item embeddings or a category column")
        cap, cap_cats = rules.category_cap, None
        if cap is not None:
            column = rules.cap_column or self.category
            if column is None or column not in hydrated:
                raise KeyError(f"category_cap: the item table has no column {column!r}")
            cap_cats = _hashable(hydrated[column])
        order = rerank.mmr(keys, k, diversity=diversity, embeddings=vecs, categories=sim_cats,
                           cap=cap, cap_categories=cap_cats)
        penalty = (diversity * rerank.redundancy(order, embeddings=vecs, categories=sim_cats)
                   if diversity and len(order) else None)

        out = []
        for pos, i in enumerate(order):
            why = {}
            if retrieved:
                why["retrieval_rank"] = int(i) + 1
                why["retrieval_score"] = float(r_scores[i])
            else:
                why["popularity_rank"] = int(i) + 1
            if p_scores is not None:
                why["ranking_score"] = float(p_scores[i])
            if calibrated is not None:
                why["calibrated_score"] = float(calibrated[i])
            if blended is not None:
                why["blended_score"] = float(blended[i])
            for name, delta in deltas:
                if delta[i] != 0:
                    why.setdefault("boosts", {})[name] = float(delta[i])
            if fresh is not None and fresh[i] != 0:
                why["freshness_boost"] = float(fresh[i])
            # 1 + the candidates scored higher (ties: those listed before)
            why["relevance_rank"] = int(1 + np.count_nonzero(final > final[i])
                                        + np.count_nonzero(final[:i] == final[i]))
            if explore:
                why["explored"] = True
                why["sampling_key"] = float(keys[i])
            if diversity:
                why["mmr_position"] = pos + 1
                why["mmr_penalty"] = float(penalty[pos])
            out.append(Recommendation(
                item_id=ids[i], final_score=float(final[i]),
                retrieval_score=float(r_scores[i]) if retrieved else None,
                ranking_score=None if p_scores is None else float(p_scores[i]),
                category=None if cats is None else _plain(cats[i]), reasons=why))
        return out

    # -- many users ----------------------------------------------------------------------------
    def recommend_many(self, user_ids, contexts=None, **kwargs):
        """``recommend`` for many users at once on ``max_workers`` threads sharing the channel;
        results in the order of ``user_ids``. ``contexts``: one dict for all, or one per user."""
        user_ids = list(user_ids)
        if contexts is None or isinstance(contexts, Mapping):
            contexts = [contexts] * len(user_ids)
        contexts = list(contexts)
        if len(contexts) != len(user_ids):
            raise ValueError(f"{len(contexts)} contexts for {len(user_ids)} users")
        pool = self._pool()
        jobs = [pool.submit(self.recommend, u, context=c, **kwargs)
                for u, c in zip(user_ids, contexts)]
        return [j.result() for j in jobs]

    async def arecommend(self, user_id, **kwargs):
        """``recommend`` for asyncio code: runs on the client's threads, never blocks the loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool(),
                                          functools.partial(self.recommend, user_id, **kwargs))
