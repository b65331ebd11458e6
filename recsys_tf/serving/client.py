"""The recommendation client: retrieve -> hydrate -> rank -> re-rank, over TF Serving's gRPC API.

It holds no model code. Everything it sends is shaped by the models' own metadata
(``GetModelMetadata``): input names, dtypes and shapes are read, never hard-coded. It works
unchanged against TensorFlow Serving and against the bundled server.

Pipeline for one user::

    user features (UserStore) + request context
      -> retrieval model's ``serving_default`` (query features, k) -> candidate ids + scores
      -> drop seen / excluded items
      -> item features hydrated from the exported item table (ItemStore)
      -> one batched Predict on the ranker -> click probabilities
      -> re-rank: blend scores, MMR diversity over item embeddings or categories
      -> top k, each with its scores and the reasons for its place

When the ranker fails the answer degrades to retrieval order; when retrieval fails, to the most
popular unseen items. Degraded answers are flagged (``Result.degraded``), never raised, unless
``raise_errors=True``.

Example::

    with Recommender("127.0.0.1:8500", tables="saved_models/two_tower/1/assets.extra") as rec:
        result = rec.recommend("u17", k=10, diversity=0.3)
        for item in result.items:
            print(item.item_id, item.final_score, item.reasons)
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import grpc
import numpy as np

from recsys_tf.serving import rerank
from recsys_tf.serving.grpc_client import ServingClient

log = logging.getLogger("recsys_tf.client")


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class ItemStore:
    """Item features by id. Implement ``get`` (and ``popular``) to plug in a feature store."""

    def get(self, item_ids) -> dict:
        """``{column: values aligned with item_ids}``; unknown ids are ``None``."""
        raise NotImplementedError

    def popular(self, n, exclude=()) -> list:
        raise NotImplementedError

    size = 0  # number of items known, 0 if the store cannot tell


class InMemoryItemStore(ItemStore):
    """The exported item table (``items.jsonl`` + ``item_embeddings.npy``) held in memory."""

    def __init__(self, rows, key, embeddings=None):
        self.key = key
        self.columns = [c for c in rows[0] if c != key] if rows else []
        self.rows = {r[key]: r for r in rows}
        self._pos = {r[key]: i for i, r in enumerate(rows)}
        self.embeddings = embeddings
        pop = sorted(rows, key=lambda r: -r.get("popularity", 0))
        self._popular = [r[key] for r in pop]

    @property
    def size(self):
        return len(self.rows)

    @classmethod
    def from_dir(cls, path, key):
        rows = _read_jsonl(os.path.join(path, "items.jsonl"))
        emb_path = os.path.join(path, "item_embeddings.npy")
        emb = np.load(emb_path) if os.path.exists(emb_path) else None
        return cls(rows, key, emb)

    def normalise(self, item_id):
        """Ids come back from Predict as bytes; the table keys are str or int."""
        if isinstance(item_id, bytes):
            item_id = item_id.decode()
        if isinstance(item_id, np.generic):
            item_id = item_id.item()
        return item_id

    def get(self, item_ids):
        rows = [self.rows.get(i) for i in item_ids]
        return {c: [None if r is None else r.get(c) for r in rows] for c in self.columns}

    def vectors(self, item_ids):
        if self.embeddings is None:
            return None
        return self.embeddings[[self._pos[i] for i in item_ids]] if item_ids else \
            np.zeros((0, self.embeddings.shape[1]), np.float32)

    def popular(self, n, exclude=()):
        exclude = set(exclude)
        return [i for i in self._popular if i not in exclude][:n]


class UserStore:
    """User features (and ``seen`` items) by id, from the exported ``users.jsonl``."""

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
    user_id: object
    items: list
    degraded: str | None = None
    timings_ms: dict = dataclasses.field(default_factory=dict)
    notes: list = dataclasses.field(default_factory=list)

    def to_dict(self):
        return _plain(dataclasses.asdict(self))


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, bytes):
        return x.decode()
    return x


def _column(values, spec, rows):
    """Values for one signature input, cast to its dtype and padded to its shape."""
    dtype, shape = spec["dtype"], spec["shape"]
    if len(shape) >= 2:  # padded sequences: [batch, max_len]
        width = shape[1] if shape[1] and shape[1] > 0 else max((len(v or ()) for v in values), default=1)
        pad = "" if dtype == "string" else 0
        out = np.full((rows, width), pad, dtype=object if dtype == "string" else dtype)
        for i, v in enumerate(values):
            v = list(v or ())[-width:]
            if v:
                out[i, :len(v)] = [str(x) for x in v] if dtype == "string" else v
        return out
    if dtype == "string":
        return np.array(["" if v is None else str(v) for v in values], dtype=object)
    if np.issubdtype(np.dtype(dtype), np.floating):
        return np.array([np.nan if v is None else v for v in values], dtype=dtype)
    return np.array([0 if v is None else v for v in values], dtype=dtype)


class Recommender:
    """Multi-stage recommendations from served models.

    Args:
      target: ``host:port`` of TF Serving or the bundled server.
      tables: directory with the exported ``items.jsonl`` / ``users.jsonl`` /
        ``item_embeddings.npy`` and ``model_card.json`` (a retrieval export's ``assets.extra``).
      retrieval_model: served retrieval model name (default ``"two_tower"``).
      ranker: served ranker name (default ``"deepfm"``); None skips ranking.
      ranker_version, ranker_label: pin a ranker version or label (canaries).
      timeout: overall deadline per ``recommend`` call in seconds (default 2.0).
      item_store, user_store: replace the in-memory tables (e.g. a real feature store).
      raise_errors: raise instead of degrading (default False).
    """

    def __init__(self, target, tables, retrieval_model="two_tower", ranker="deepfm",
                 ranker_version=None, ranker_label=None, timeout=2.0, item_store=None,
                 user_store=None, raise_errors=False, client=None):
        with open(os.path.join(tables, "model_card.json")) as f:
            card = json.load(f)
        fs = card["features"]
        self.item_key, self.user_key = fs["item_id"], fs["user_id"]
        self.category = card.get("category_feature")
        self.items = item_store or InMemoryItemStore.from_dir(tables, self.item_key)
        self.users = user_store or UserStore.from_dir(tables, self.user_key)
        self.client = client or ServingClient(target, timeout=timeout)
        self.retrieval_model, self.ranker = retrieval_model, ranker
        self.ranker_version, self.ranker_label = ranker_version, ranker_label
        self.timeout, self.raise_errors = float(timeout), bool(raise_errors)

    def close(self):
        self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- stages -----------------------------------------------------------------------------
    def _inputs(self, spec_inputs, user, items=None, rows=1, skip=()):
        """Request inputs for a signature: item columns first, then user/context values."""
        out, missing = {}, []
        for name, spec in spec_inputs.items():
            if name in skip:
                continue
            if items is not None and name in items:
                values = items[name]
            elif name in user:
                values = [user[name]] * rows
            else:
                missing.append(name)
                values = [None] * rows
            out[name] = _column(values, spec, rows)
        return out, missing

    def retrieve(self, user, n, deadline):
        sig = self.client.signature(self.retrieval_model)
        inputs, missing = self._inputs(sig["inputs"], user, skip=("k",))
        inputs["k"] = np.array(n, dtype=sig["inputs"]["k"]["dtype"])
        out = self.client.predict(self.retrieval_model, inputs,
                                  timeout=max(deadline - time.monotonic(), 1e-3))
        ids = [self.items.normalise(i) for i in out["item_ids"][0]]
        return ids, out["scores"][0].astype(np.float64), missing

    def rank(self, user, ids, hydrated, deadline):
        sig = self.client.signature(self.ranker, version=self.ranker_version)
        inputs, missing = self._inputs(sig["inputs"], user, hydrated | {self.item_key: ids},
                                       rows=len(ids))
        out = self.client.predict(self.ranker, inputs, version=self.ranker_version,
                                  label=self.ranker_label,
                                  timeout=max(deadline - time.monotonic(), 1e-3))
        return np.asarray(next(iter(out.values()))).reshape(-1).astype(np.float64), missing

    # -- the pipeline ----------------------------------------------------------------------
    def recommend(self, user_id, k=10, context=None, n_candidates=100, diversity=0.0,
                  blend_weight=0.0, exclude=(), filter_seen=True):
        """Top ``k`` items for ``user_id`` (see the module docstring for the stages).

        Args:
          context: request-time feature values (e.g. ``{"hour": "20", "device": "mobile"}``),
            overriding the stored user features of the same name.
          n_candidates: how many items retrieval returns before filtering.
          diversity: MMR trade-off in [0, 1] (0 = pure relevance).
          blend_weight: weight of the retrieval score in the final score (0 = ranker only).
          exclude: item ids never to return (blocked items); ``filter_seen`` also drops the
            user's known interactions.
        """
        start = time.monotonic()
        deadline = start + self.timeout
        timings, notes, degraded = {}, [], None
        user = self.users.get(user_id)
        user.update(context or {})
        banned = set(exclude) | (set(user.get("seen") or ()) if filter_seen else set())

        t = time.monotonic()
        try:
            n = n_candidates + len(banned)  # enough to survive the seen-item filter
            if self.items.size:
                n = min(n, self.items.size)     # an index holds no more items than the table
            ids, r_scores, missing = self.retrieve(user, n, deadline)
            if missing:
                notes.append(f"retrieval inputs not known for this user, sent as unknown: {missing}")
        except grpc.RpcError as e:
            if self.raise_errors:
                raise
            degraded = f"retrieval failed ({e.code().name}): most popular items"
            ids = self.items.popular(n_candidates, exclude=banned)
            r_scores = None
        timings["retrieval"] = (time.monotonic() - t) * 1e3

        retrieved = r_scores is not None
        if retrieved:
            keep = rerank.filter_mask(ids, banned)
            ids = [i for i, kp in zip(ids, keep) if kp][:n_candidates]
            r_scores = r_scores[keep][:n_candidates]
        else:  # popularity order stands in for retrieval scores
            r_scores = 1.0 - np.arange(len(ids), dtype=np.float64) / max(len(ids), 1)

        t = time.monotonic()
        hydrated = self.items.get(ids)
        timings["hydrate"] = (time.monotonic() - t) * 1e3

        t = time.monotonic()
        p_scores = None
        if self.ranker and ids:
            try:
                p_scores, missing = self.rank(user, ids, hydrated, deadline)
                if missing:
                    notes.append(f"ranker inputs not known, sent as unknown: {missing}")
            except grpc.RpcError as e:
                if self.raise_errors:
                    raise
                degraded = degraded or f"ranker failed ({e.code().name}): retrieval order"
        timings["ranking"] = (time.monotonic() - t) * 1e3

        t = time.monotonic()
        if p_scores is None:  # no ranker, or it failed: the candidates' own order
            final = r_scores
        else:
            final = rerank.blend(r_scores, p_scores, weight=blend_weight)
        cats = hydrated.get(self.category) if self.category else None
        vecs = self.items.vectors(ids)
        order = rerank.mmr(final, k, diversity=diversity, embeddings=vecs,
                           categories=None if vecs is not None or cats is None else np.asarray(cats, dtype=object))
        items = []
        for rank_pos, i in enumerate(order):
            reasons = {"retrieval_rank" if retrieved else "popularity_rank": int(i) + 1}
            if diversity:
                reasons["mmr_position"] = rank_pos + 1
            items.append(Recommendation(
                item_id=ids[i], final_score=float(final[i]),
                retrieval_score=float(r_scores[i]) if retrieved else None,
                ranking_score=None if p_scores is None else float(p_scores[i]),
                category=None if cats is None else cats[i], reasons=reasons))
        timings["rerank"] = (time.monotonic() - t) * 1e3
        timings["total"] = (time.monotonic() - start) * 1e3
        return Result(user_id=user_id, items=items, degraded=degraded, timings_ms=timings,
                      notes=notes)
