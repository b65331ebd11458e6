"""Calls to the served models for the recommendation client: shared channels, retries within a
stage's deadline, the signature cache and Predict.

One ``ServingClient`` (a gRPC channel and its stubs) is kept per target and shared by every
``Recommender`` of the process (:data:`CHANNELS`). :class:`ModelCaller` is the part of a
``Recommender`` that makes the calls: ``call`` retries the retryable codes with jittered
exponential backoff, never past the deadline; ``signature`` reads ``GetModelMetadata`` once
and re-reads it after ``metadata_ttl``; ``predict`` builds the request from the signature and
rebuilds it once when a rejected request meets a changed signature (a new version).
:class:`CallState` is one ``recommend`` call's bookkeeping, shared by its stages.

Example::

    caller = ModelCaller(ClientOptions(max_attempts=2))
    state = CallState(debug=False)
    deadline = time.monotonic() + 0.5
    sig = caller.signature("ranker", client, "deepfm", None, "serving_default", deadline, state)
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import random
import threading
import time

import grpc

from recsys_tf.client.errors import FAILURES, DeadlineExceeded, RequestError, error_code
from recsys_tf.client.grpc_client import ServingClient
from recsys_tf.client.options import ClientOptions
from recsys_tf.client.requests import summary
from recsys_tf.wire.contract import DEFAULT_SIGNATURE

__all__ = ["CHANNELS", "CallState", "Channels", "ModelCaller"]

log = logging.getLogger("recsys_tf.client")


# ------------------------------------------------------------------------------ channels
class Channels:
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


CHANNELS = Channels()   # the process's channels, shared by every Recommender


# ------------------------------------------------------------------------------ per-call state
@dataclasses.dataclass
class CallState:
    """Per-request bookkeeping shared by the stages (one per ``recommend`` call)."""

    debug: bool
    retries: int = 0
    versions: dict = dataclasses.field(default_factory=dict)   # stage -> served version
    answered: dict = dataclasses.field(default_factory=dict)   # which -> version that answered
    build_ms: dict = dataclasses.field(default_factory=dict)   # stage -> request building
    signatures: dict = dataclasses.field(default_factory=dict)  # which -> signature called
    rows: object = None   # the retrieved candidates' rows in the in-memory item table, if known
    user_inputs: dict = dataclasses.field(default_factory=dict)  # user-side arrays built


@dataclasses.dataclass
class _Cached:
    signature: dict
    fetched: float


_REPORTS_VERSION = {}  # client class -> whether its predict takes with_version=


def _reports_version(client) -> bool:
    """Whether ``client.predict`` takes ``with_version=`` (``ServingClient`` does; a stand-in
    may not, or may pass its keywords on to one that does). Cached per class."""
    cls = type(client)
    per_class = "predict" not in getattr(client, "__dict__", {})
    if per_class and cls in _REPORTS_VERSION:
        return _REPORTS_VERSION[cls]
    try:
        params = inspect.signature(client.predict).parameters.values()
        found = any(p.name == "with_version" or p.kind is p.VAR_KEYWORD for p in params)
    except (TypeError, ValueError):
        found = False
    if per_class:
        _REPORTS_VERSION[cls] = found
    return found


# ------------------------------------------------------------------------------ the calls
class ModelCaller:
    """Retries, deadlines, the signature cache and Predict: the calling part of a
    ``Recommender``. It holds no channel: each call names the ``ServingClient`` (or stand-in)
    to use, so one caller serves a retrieval and a ranker target alike.

    Args:
      options: a :class:`ClientOptions`; read here: ``max_attempts``, ``backoff``,
        ``retry_resource_exhausted``, ``metadata_ttl``, ``min_call_s``, ``seed`` (the jitter)
        and ``debug`` (logging is per call: ``CallState.debug``).
    """

    def __init__(self, options=None):
        options = options or ClientOptions()
        self.max_attempts = options.max_attempts
        self.backoff = options.backoff
        self.retry_codes = frozenset(
            {grpc.StatusCode.UNAVAILABLE} | ({grpc.StatusCode.RESOURCE_EXHAUSTED}
                                             if options.retry_resource_exhausted else set()))
        self.metadata_ttl = options.metadata_ttl
        self.min_call_s = options.min_call_s   # no call is started with less time than this
        self._rng = random.Random(options.seed)
        self._lock = threading.Lock()
        self._signatures = {}  # (which, model, signature, version, label) -> _Cached

    def call(self, what, fn, deadline, state):
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
                with self._lock:
                    delay = d / 2 + self._rng.uniform(0, d / 2)
                if time.monotonic() + delay + self.min_call_s >= deadline:
                    raise
                if state.debug:
                    log.info("%s: %s, retry %d in %.1f ms", what, error_code(e), attempt,
                             delay * 1e3)
                state.retries += 1
                time.sleep(delay)

    def signature(self, which, client, model, version, signature, deadline, state,
                  force=False, label=None):
        """The model's signature, from GetModelMetadata once and then from the cache; re-read
        after ``metadata_ttl`` (or with ``force``) and a version change logged. With ``label``
        it is the labelled version's signature. ``which`` names the caller's role for the
        model (``"retrieval"``, ``"ranker"``): each role has its own cache entries."""
        key = (which, model, signature, version, label)
        by_label = {} if label is None else {"label": label}
        with self._lock:
            cached = self._signatures.get(key)
        now = time.monotonic()
        fresh = cached is not None and not force and (
            self.metadata_ttl is None or now - cached.fetched < self.metadata_ttl)
        if fresh:
            return cached.signature
        try:
            sig = self.call(f"GetModelMetadata {model}", lambda t: client.signature(
                model, signature, version=version, refresh=cached is not None or force,
                timeout=t, **by_label),
                deadline, state)
        except ValueError as e:  # the model has no such signature
            raise RequestError(model, None, str(e)) from None
        except FAILURES:
            if cached is not None and not force:  # keep serving with what we know
                return cached.signature
            raise
        if cached is not None and cached.signature.get("version") != sig.get("version"):
            log.info("model %s: version %s -> %s, signature re-read", model,
                     cached.signature.get("version"), sig.get("version"))
        with self._lock:
            self._signatures[key] = _Cached(sig, time.monotonic())
        return sig

    def predict(self, which, client, model, build, deadline, state, version=None, label=None,
                signature=DEFAULT_SIGNATURE, outputs=None, sig=None):
        """Signature -> request (``build(sig)`` -> ``(inputs, extra)``) -> Predict; when the
        server rejects the request (INVALID_ARGUMENT / FAILED_PRECONDITION) and the signature
        changed meanwhile (a new version), rebuild once with the new one.

        Returns ``(outputs, sig, extra, build_ms)``. The version that answered goes to
        ``state.answered[which]`` when the client reports it (``predict(with_version=True)``);
        the stage then records it in ``Result.models``. ``outputs(sig)``: the output names to
        ask for (None: all). ``sig``: the signature, when the caller has just read it."""
        if sig is None:
            sig = self.signature(which, client, model, version, signature, deadline, state,
                                 label=label)
        versioned = {"with_version": True} if _reports_version(client) else {}
        for attempt in (0, 1):
            t = time.perf_counter()
            inputs, extra = build(sig)
            build_ms = (time.perf_counter() - t) * 1e3
            names = outputs(sig) if outputs else None
            if state.debug:
                log.info("Predict %s (version=%s label=%s signature=%s) outputs=%s inputs: %s",
                         model, version, label, signature, names, summary(inputs))
            try:
                out = self.call(f"Predict {model}", lambda t: client.predict(
                    model, inputs, signature=signature, version=version, label=label,
                    output_filter=names, timeout=t, **versioned), deadline, state)
            except grpc.RpcError as e:
                if attempt or e.code() not in (grpc.StatusCode.INVALID_ARGUMENT,
                                               grpc.StatusCode.FAILED_PRECONDITION):
                    raise
                try:
                    new = self.signature(which, client, model, version, signature, deadline,
                                         state, force=True, label=label)
                except FAILURES:
                    raise e from None
                if new == sig:
                    raise
                sig = new
                continue
            if versioned and isinstance(out, tuple):
                out, state.answered[which] = out
            if state.debug:
                log.info("Predict %s answered: %s", model, summary(out))
            return out, sig, extra, build_ms
