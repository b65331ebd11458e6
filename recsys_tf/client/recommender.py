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
         (its ``one_user`` signature when it has one: the user's features sent once)
      -> re-rank (recsys_tf.client.rerank): calibrate, blend, boosts,       [stage "rerank"]
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

The pieces live in their own modules, all re-exported here:
``client_stores`` (ItemStore, InMemoryItemStore, UserStore), ``client_requests`` (request
building from a signature; RequestError, DeadlineExceeded), ``client_calls`` (shared channels,
retries, the signature cache, Predict) and ``client_rules`` (Rules, Boost, the re-ranking
stage, Result, Recommendation); this module holds the ``Recommender`` pipeline.
"""
from __future__ import annotations

import asyncio
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

from recsys_tf.client import rerank
from recsys_tf.client.calls import (  # noqa: F401  (re-exported)
    _CHANNELS,
    _Cached,
    _Call,
    _Channels,
    _ServedModels,
)
from recsys_tf.client.requests import (  # noqa: F401  (re-exported)
    _FAILURES,
    DeadlineExceeded,
    RequestError,
    _check,
    _error_code,
    _error_text,
    _input,
    _is_sequence,
    _kind,
    _numeric,
    _padded,
    _string_column,
    _summary,
    _to_bytes,
)
from recsys_tf.client.rules import (  # noqa: F401  (re-exported)
    Boost,
    Recommendation,
    Result,
    Rules,
    _hashable,
    _plain,
    rerank_stage,
)
from recsys_tf.client.stores import (  # noqa: F401  (re-exported)
    InMemoryItemStore,
    ItemStore,
    UserStore,
    _as_column,
    _is_number,
    _read_jsonl,
)
from recsys_tf.client.grpc_client import ServingClient  # noqa: F401
from recsys_tf.wire.contract import (  # noqa: F401  (re-exported)
    CARD_CATEGORY_FEATURE,
    CARD_FEATURES,
    CARD_INDEX_K,
    DEFAULT_SIGNATURE,
    MODEL_CARD_FILE,
    ONE_USER_SIGNATURE,
)

# A ranker signature whose user and context inputs are one row for all candidates (written by
# recsys_tf.export for every ranker with item features); see Recommender's ranker_signature.

__all__ = [
    "Recommender", "Result", "Recommendation", "Rules", "Boost", "ItemStore",
    "InMemoryItemStore", "UserStore", "RequestError", "DeadlineExceeded",
]

log = logging.getLogger("recsys_tf.client")


# ------------------------------------------------------------------------------ the client
class Recommender(_ServedModels):
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
      ranker_signature: the ranker signature, or ``"auto"`` (the default): ``one_user`` when
        the ranker has it - the user's and context features sent once ([1, ...]) rather than
        repeated for every candidate - else ``serving_default``. TF Serving's batching
        rejects ``one_user`` requests (their inputs differ in their first dimension); in
        ``"auto"`` such a rejection is answered with ``serving_default`` and that signature
        used from then on (logged once). Name ``serving_default`` to skip the first try.
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
                 retrieval_signature=DEFAULT_SIGNATURE, ranker_signature="auto",
                 debug=False, max_workers=4,
                 max_message_mb=64, seed=None, max_retrieval_k=None):
        card = {}
        if tables is not None:
            with open(os.path.join(tables, MODEL_CARD_FILE)) as f:
                card = json.load(f)
        elif item_store is None or user_store is None:
            raise ValueError("give tables=, or both item_store= and user_store=")
        fs = card.get(CARD_FEATURES, {})
        self.item_key = fs.get("item_id") or item_store.key
        self.user_key = fs.get("user_id") or user_store.key
        self.category = card.get(CARD_CATEGORY_FEATURE)
        # a ScaNN export answers at most its index_k items per request
        self.max_retrieval_k = max_retrieval_k or card.get(CARD_INDEX_K)
        self.items = item_store or InMemoryItemStore.from_dir(tables, self.item_key)
        # the in-memory store looks a tuple of candidates up once per request; other stores
        # get the list the ItemStore interface has always passed
        self._tuple_ids = isinstance(self.items, InMemoryItemStore)
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
        self.ranker_signature = ranker_signature
        self._one_user = None  # "auto": whether the ranker takes one_user (None: not known yet)
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
        self._signatures = {}  # (which, model, signature, version, label) -> _Cached
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


    def _build(self, model, sig, user, rows, items=None, skip=(), encoded=(), made=None):
        """Request inputs for a signature: item columns first, then user/context values.

        ``encoded`` names item columns taken from the item store's ``wire`` (object arrays of
        ``bytes``, one per row): for a string input of one value per row they are sent as
        they are, when they are such arrays; anything else goes through the usual conversion.
        A user or context value goes out as one row where the signature's first dimension is
        1 (``one_user``), else repeated for each of the ``rows``.
        ``made`` (optional, a dict kept for one ``recommend`` call, whose stages pass the same
        ``user``): user-side arrays already built, by input name, dtype, shape and rows -
        the retrieval and ``one_user`` requests carry the same ones, converted once.
        Returns ``(inputs, missing)``; inputs the user has no value for are sent as unknown
        ("" / NaN / 0) and listed in ``missing`` (or raise with ``strict``).
        """
        out, missing = {}, []
        for name, spec in sig["inputs"].items():
            if name in skip:
                continue
            if name in encoded and spec["dtype"] == "string" and spec["shape"] is not None \
                    and len(spec["shape"]) == 1:
                arr = items[name]
                if isinstance(arr, np.ndarray) and arr.dtype == object and arr.shape == (rows,):
                    _check(model, name, spec, arr, rows)
                    out[name] = arr
                    continue
            if items is not None and name in items:
                out[name] = arr = _input(model, name, spec, items[name], rows, False)
                _check(model, name, spec, arr, rows)
                continue
            known = name in user
            if not known:
                if self.strict:
                    raise RequestError(model, name, "no value for this input (strict mode)")
                missing.append(name)
            shape = spec["shape"]
            n = 1 if shape and shape[0] == 1 else rows
            # what decides the array: dtype, rank and inner sizes, rows (not how the
            # signature names the first dimension, -1 or 1)
            key = (name, str(spec["dtype"]), n,
                   None if shape is None else (len(shape), tuple(shape[1:])))
            arr = None if made is None else made.get(key)
            if arr is None:
                arr = _input(model, name, spec, [user[name] if known else None], n, True)
                if made is not None:
                    made[key] = arr
            _check(model, name, spec, arr, n)
            out[name] = arr
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
                                          skip=(k_name,) if k_name else (),
                                          made=state.user_inputs)
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
            raw = np.asarray(out[ids_name]).reshape(-1)[:n]
            found = self.items.ids_and_rows(raw) if self._tuple_ids else None
            if found is not None:   # the in-memory store: the rows come with the ids
                ids, state.rows = found
            else:
                ids = self.items.normalise_many(raw)
            scores = np.asarray(out[scores_name], dtype=np.float64).reshape(-1)[:n]
        answered = state.answered.get("retrieval")
        state.versions["retrieval"] = answered if answered is not None else sig.get("version")
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

    def _ranker_signature_name(self, deadline, state):
        """(``ranker_signature``, None); for ``"auto"``, ``one_user`` when the ranker has it -
        with its description when it was read just now to find out."""
        if self.ranker_signature != "auto":
            return self.ranker_signature, None
        sig = None
        if self._one_user is None:
            try:
                sig = self._signature("ranker", self.ranker_client, self.ranker,
                                      self.ranker_version, ONE_USER_SIGNATURE, deadline, state,
                                      label=self.ranker_label)
                self._one_user = True
            except RequestError:        # no such signature
                self._one_user = False
        return (ONE_USER_SIGNATURE, sig) if self._one_user else (DEFAULT_SIGNATURE, None)

    def rank(self, user, ids, hydrated, deadline, state=None):
        """Ranker scores for the candidates (one batched Predict); and the unknown inputs."""
        state = state or _Call(self.debug)
        items = dict(hydrated)
        items[self.item_key] = ids
        wire = getattr(self.items, "wire", None)   # string columns already encoded, if kept

        def build(sig):
            columns, encoded = items, ()
            if wire is not None:                    # used for the string inputs only
                encoded = {n: v for n, v in wire(ids).items()
                           if n in sig["inputs"] and sig["inputs"][n]["dtype"] == "string"}
                columns = {**items, **encoded}
            return self._build(self.ranker, sig, user, len(ids), items=columns, encoded=encoded,
                               made=state.user_inputs)

        def predict(signature, sig=None):
            return self._predict(
                "ranker", self.ranker_client, self.ranker, build, deadline, state,
                version=self.ranker_version, label=self.ranker_label, signature=signature,
                outputs=lambda s: [self._score_output(s)], sig=sig)

        signature, known = self._ranker_signature_name(deadline, state)
        try:
            out, sig, missing, build_ms = predict(signature, known)
        except grpc.RpcError as e:
            # e.g. TF Serving with batching on: its inputs must share their first dimension
            if signature != ONE_USER_SIGNATURE or self.ranker_signature != "auto" or \
                    e.code() not in (grpc.StatusCode.INVALID_ARGUMENT,
                                     grpc.StatusCode.FAILED_PRECONDITION):
                raise
            signature = DEFAULT_SIGNATURE
            out, sig, missing, build_ms = predict(signature)
            self._one_user = False
            log.warning("ranker %s: signature %s rejected (%s); using %s (the user's features "
                        "repeated for every candidate) from now on", self.ranker,
                        ONE_USER_SIGNATURE, _error_text(e), signature)
        state.signatures["ranker"] = signature
        scores = np.asarray(out[self._score_output(sig)], dtype=np.float64).reshape(-1)
        if len(scores) != len(ids):
            raise RequestError(self.ranker, None, f"returned {len(scores)} scores for "
                               f"{len(ids)} candidates")
        answered = state.answered.get("ranker")  # from the Predict response, when reported
        if answered is not None:
            state.versions["ranking"] = answered
        else:
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

        # seen / blocked items; for the in-memory store the candidates from here on are a
        # tuple, whose rows it then looks up once for hydration, the request and MMR
        seq = tuple if self._tuple_ids else list
        if retrieved:
            if banned:
                hit = np.fromiter(map(banned.__contains__, ids), dtype=bool, count=len(ids))
                kept = np.flatnonzero(~hit)[:n_candidates]
                ids = seq(map(ids.__getitem__, kept.tolist()))
            else:
                kept = slice(0, n_candidates)
                ids = seq(ids[kept])
            r_scores = r_scores[kept]
            if state.rows is not None:      # their rows in the item table, known already
                self.items.remember(ids, state.rows[kept])
        else:  # popularity order stands in for retrieval scores
            ids = seq(ids)
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
                ids = seq([ids[i] for i in idx])
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
                models["ranker"] = {"name": self.ranker, "version": state.versions.get("ranking"),
                                    "signature": state.signatures.get("ranker")}
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
        """Scores -> order -> the top k with their reasons (``client_rules.rerank_stage``)."""
        return rerank_stage(ids, r_scores, p_scores, hydrated, retrieved, k, diversity,
                            blend_weight, rules, explore, seed, items=self.items,
                            category=self.category, diversity_by=self.diversity_by)

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
