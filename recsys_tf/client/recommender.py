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

Deadlines (settings of :class:`ClientOptions`): ``timeout`` is the budget of the whole
``recommend`` call. Retrieval must finish within the first ``stage_shares[0]`` of it, ranking
by ``stage_shares[1]``; the rest is kept for the local re-ranking. Calls are retried with
jittered exponential backoff only on UNAVAILABLE (and RESOURCE_EXHAUSTED with
``retry_resource_exhausted=True``), and never past the stage's deadline.

Fallbacks: when the ranker fails or runs out of time the answer keeps retrieval order; when
retrieval fails, the most popular unseen items are ranked instead. Degraded answers are flagged
(``Result.degraded``), never raised, unless ``ClientOptions(raise_errors=True)``.

One gRPC channel (with its stubs) is opened per target and shared by every ``Recommender`` of
the process; a ``Recommender`` is safe to share across threads (``recommend_many`` and the
asyncio ``arecommend`` do).

Example::

    with Recommender("127.0.0.1:8500", "saved_models/two_tower/1/assets.extra",
                     ranker="deepfm", timeout=0.5,
                     options=ClientOptions(max_attempts=2, ranker_label="canary")) as rec:
        result = rec.recommend("u17", k=10, diversity=0.3)
        for item in result.items:
            print(item.item_id, item.final_score, item.reasons)

A ``Recommender`` holds its parts: a :class:`ModelCaller` (``calls``: deadlines, retries,
the signature cache, Predict), a :class:`RequestBuilder` (``requests``: inputs built from and
checked against a signature), the stores (``stores``: :class:`ItemStore`, :class:`UserStore`)
and the default :class:`Rules` (``rules``: business rules, the re-rank stage, ``Result``);
how it calls the models is one frozen :class:`ClientOptions` (``options``). This module holds
the pipeline; the names a caller uses are re-exported here and by ``recsys_tf.client``.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from concurrent import futures

import grpc
import numpy as np

from recsys_tf.client.calls import CHANNELS, CallState, ModelCaller
from recsys_tf.client.errors import (
    FAILURES,
    DeadlineExceeded,
    RequestError,
    error_code,
    error_text,
)
from recsys_tf.client.options import ClientOptions
from recsys_tf.client.requests import RequestBuilder, kind
from recsys_tf.client.rules import Boost, Recommendation, Result, Rules, rerank_stage
from recsys_tf.client.stores import InMemoryItemStore, ItemStore, UserStore
from recsys_tf.wire.contract import (
    CARD_CATEGORY_FEATURE,
    CARD_FEATURES,
    CARD_INDEX_K,
    DEFAULT_SIGNATURE,
    MODEL_CARD_FILE,
    ONE_USER_SIGNATURE,
)

__all__ = [
    "Recommender", "ClientOptions", "Result", "Recommendation", "Rules", "Boost", "ItemStore",
    "InMemoryItemStore", "UserStore", "RequestError", "DeadlineExceeded",
]

log = logging.getLogger("recsys_tf.client")


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
      rules: default :class:`Rules` (``recommend(rules=...)`` overrides them per call).
      item_store, user_store: replace the in-memory tables (e.g. a real feature store).
      client: a ``ServingClient``-like object (``signature`` and ``predict``) to use instead of
        the shared channel (tests, in-process serving); it is not closed by ``close()``.
      timeout: overall deadline per ``recommend`` call in seconds; when given it replaces
        ``options.timeout`` (default 2.0).
      options: :class:`ClientOptions`: stage shares, retries, the signature cache, which
        signatures, versions and outputs to use, strictness, logging, threads.

    The parts, as attributes: ``options``, ``calls`` (:class:`ModelCaller`), ``requests``
    (:class:`RequestBuilder`), ``items`` / ``users`` (the stores), ``rules``, and ``client`` /
    ``ranker_client`` (the ``ServingClient`` of each stage).
    """

    def __init__(self, target, tables, retrieval_model="two_tower", ranker="deepfm", *,
                 rules=None, item_store=None, user_store=None, client=None, timeout=None,
                 options=None):
        options = options if options is not None else ClientOptions()
        if not isinstance(options, ClientOptions):
            raise TypeError(f"options must be a ClientOptions, got {type(options).__name__}")
        if timeout is not None:
            options = options.replace(timeout=timeout)
        self.options = options
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
        self.max_retrieval_k = options.max_retrieval_k or card.get(CARD_INDEX_K)
        self.items = item_store or InMemoryItemStore.from_dir(tables, self.item_key)
        # the in-memory store looks a tuple of candidates up once per request; other stores
        # get the list the ItemStore interface has always passed
        self._tuple_ids = isinstance(self.items, InMemoryItemStore)
        self.users = user_store or UserStore.from_dir(tables, self.user_key)
        self.rules = rules or Rules()
        self.calls = ModelCaller(options)
        self.requests = RequestBuilder(strict=options.strict)
        self.target = target
        self._own = client is None
        self.client = client or CHANNELS.acquire(target, options.max_message_mb)
        ranker_target = options.ranker_target
        if client is None and ranker_target and ranker_target != target:
            self.ranker_client = CHANNELS.acquire(ranker_target, options.max_message_mb)
            self._own_ranker = True
        else:
            self.ranker_client, self._own_ranker = self.client, False
        self.retrieval_model, self.ranker = retrieval_model, ranker
        self._one_user = None  # "auto": whether the ranker takes one_user (None: not known yet)
        self._lock = threading.Lock()
        self._health = {}  # stage -> error code of its last failure, None once it answers
        self._executor = None
        self._closed = False

    @property
    def timeout(self):
        """The deadline of one ``recommend`` call (``options.timeout``), in seconds."""
        return self.options.timeout

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
            CHANNELS.release(self.client)
        if self._own_ranker:
            CHANNELS.release(self.ranker_client)

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
                    max_workers=self.options.max_workers, thread_name_prefix="recommender")
            return self._executor

    # -- stages ------------------------------------------------------------------------------
    def _retrieval_roles(self, sig):
        ins, outs = sig["inputs"], sig["outputs"]
        k_name = next((n for n, s in ins.items()
                       if s["shape"] == [] and kind(s["dtype"]) in "iu"), None)
        ids = next((n for n, s in outs.items() if kind(s["dtype"]) in "Tiu"), None)
        floats = [n for n, s in outs.items() if kind(s["dtype"]) == "f"]
        if ids is not None and floats:
            return "search", k_name, ids, floats[0]
        if ids is None and len(floats) == 1:
            return "embedding", None, None, floats[0]
        raise RequestError(self.retrieval_model, None, f"cannot tell ids and scores apart "
                           f"among the outputs {sorted(outs)}")

    def retrieve(self, user, n, deadline, state=None):
        """Candidate ids (table keys) and scores, best first; and the inputs sent as unknown."""
        state = state or CallState(self.options.debug)
        info = {}

        def build(sig):
            mode, k_name, _, _ = self._retrieval_roles(sig)
            inputs, missing = self.requests.build(self.retrieval_model, sig, user, 1,
                                                  skip=(k_name,) if k_name else (),
                                                  made=state.user_inputs)
            if k_name:
                inputs[k_name] = np.array(n, dtype=sig["inputs"][k_name]["dtype"])
            info["mode"] = mode
            return inputs, missing

        def outputs(sig):
            mode, _, ids, scores = self._retrieval_roles(sig)
            return [ids, scores] if mode == "search" else [scores]

        out, sig, missing, build_ms = self.calls.predict(
            "retrieval", self.client, self.retrieval_model, build, deadline, state,
            signature=self.options.retrieval_signature, outputs=outputs)
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
        wanted = self.options.ranker_output
        if wanted is not None:
            if wanted not in sig["outputs"]:
                raise RequestError(self.ranker, None, f"no output {wanted!r}; "
                                   f"outputs are {sorted(sig['outputs'])}")
            return wanted
        floats = [n for n, s in sig["outputs"].items() if kind(s["dtype"]) == "f"]
        if len(floats) != 1:
            raise RequestError(self.ranker, None, f"cannot tell which output is the score among "
                               f"{sorted(sig['outputs'])}; pass ranker_output=")
        return floats[0]

    def _ranker_signature_name(self, deadline, state):
        """(``ranker_signature``, None); for ``"auto"``, ``one_user`` when the ranker has it -
        with its description when it was read just now to find out."""
        opts = self.options
        if opts.ranker_signature != "auto":
            return opts.ranker_signature, None
        sig = None
        if self._one_user is None:
            try:
                sig = self.calls.signature("ranker", self.ranker_client, self.ranker,
                                           opts.ranker_version, ONE_USER_SIGNATURE, deadline,
                                           state, label=opts.ranker_label)
                self._one_user = True
            except RequestError:        # no such signature
                self._one_user = False
        return (ONE_USER_SIGNATURE, sig) if self._one_user else (DEFAULT_SIGNATURE, None)

    def rank(self, user, ids, hydrated, deadline, state=None):
        """Ranker scores for the candidates (one batched Predict); and the unknown inputs."""
        state = state or CallState(self.options.debug)
        items = dict(hydrated)
        items[self.item_key] = ids
        wire = getattr(self.items, "wire", None)   # string columns already encoded, if kept

        def build(sig):
            columns, encoded = items, ()
            if wire is not None:                    # used for the string inputs only
                encoded = {n: v for n, v in wire(ids).items()
                           if n in sig["inputs"] and sig["inputs"][n]["dtype"] == "string"}
                columns = {**items, **encoded}
            return self.requests.build(self.ranker, sig, user, len(ids), items=columns,
                                       encoded=encoded, made=state.user_inputs)

        opts = self.options

        def predict(signature, sig=None):
            return self.calls.predict(
                "ranker", self.ranker_client, self.ranker, build, deadline, state,
                version=opts.ranker_version, label=opts.ranker_label, signature=signature,
                outputs=lambda s: [self._score_output(s)], sig=sig)

        signature, known = self._ranker_signature_name(deadline, state)
        try:
            out, sig, missing, build_ms = predict(signature, known)
        except grpc.RpcError as e:
            # e.g. TF Serving with batching on: its inputs must share their first dimension
            if signature != ONE_USER_SIGNATURE or opts.ranker_signature != "auto" or \
                    e.code() not in (grpc.StatusCode.INVALID_ARGUMENT,
                                     grpc.StatusCode.FAILED_PRECONDITION):
                raise
            signature = DEFAULT_SIGNATURE
            out, sig, missing, build_ms = predict(signature)
            self._one_user = False
            log.warning("ranker %s: signature %s rejected (%s); using %s (the user's features "
                        "repeated for every candidate) from now on", self.ranker,
                        ONE_USER_SIGNATURE, error_text(e), signature)
        state.signatures["ranker"] = signature
        scores = np.asarray(out[self._score_output(sig)], dtype=np.float64).reshape(-1)
        if len(scores) != len(ids):
            raise RequestError(self.ranker, None, f"returned {len(scores)} scores for "
                               f"{len(ids)} candidates")
        answered = state.answered.get("ranker")  # from the Predict response, when reported
        if answered is not None:
            state.versions["ranking"] = answered
        else:
            state.versions["ranking"] = None if opts.ranker_label else (
                opts.ranker_version if opts.ranker_version is not None else sig.get("version"))
        state.build_ms["ranking"] = build_ms
        return scores, missing

    def _report(self, stage, err, fallback=None):
        """Log a stage going down (once per error code) and coming back, not every request."""
        code = None if err is None else error_code(err)
        with self._lock:
            before = self._health.get(stage)
            if before == code:
                return
            self._health[stage] = code
        if code is not None:
            log.warning("%s failing (%s), %s until it answers again", stage, error_text(err),
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
          timeout: this call's deadline in seconds (default: ``options.timeout``).
          debug: log this call's requests (default: ``options.debug``).
        """
        start = time.monotonic()
        opts = self.options
        budget = opts.timeout if timeout is None else float(timeout)
        r_deadline = start + budget * opts.stage_shares[0]
        k_deadline = start + budget * opts.stage_shares[1]
        rules = self.rules if rules is None else rules
        state = CallState(opts.debug if debug is None else bool(debug))
        timings, notes, failures, models = {}, [], {}, {}
        degraded = []

        t = time.monotonic()
        user = self.users.get(user_id)
        user.update(context or {})
        banned = rules.banned(exclude, (user.get("seen") or ()) if filter_seen else ())
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
        except FAILURES as e:
            if opts.raise_errors:
                raise
            failures["retrieval"] = error_text(e)
            degraded.append(f"retrieval failed ({error_code(e)}): most popular items")
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
        keep = rules.allowed(hydrated, len(ids))
        if keep is not None:
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
                if opts.ranker_label:
                    models["ranker"]["label"] = opts.ranker_label
                timings["ranking_build"] = state.build_ms["ranking"]
                if missing:
                    notes.append(f"ranker inputs not known, sent as unknown: {missing}")
            except FAILURES as e:
                if opts.raise_errors:
                    raise
                failures["ranking"] = error_text(e)
                fallback = "retrieval order" if retrieved else "popularity order"
                degraded.append(f"ranker failed ({error_code(e)}): {fallback}")
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
        """Scores -> order -> the top k with their reasons (``rules.rerank_stage``)."""
        return rerank_stage(ids, r_scores, p_scores, hydrated, retrieved, k, diversity,
                            blend_weight, rules, explore, seed, items=self.items,
                            category=self.category, diversity_by=self.options.diversity_by)

    # -- many users ----------------------------------------------------------------------------
    def recommend_many(self, user_ids, contexts=None, **kwargs):
        """``recommend`` for many users at once on ``options.max_workers`` threads sharing the
        channel;
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
