"""Calls to the served models for the recommendation client: shared channels, retries within a
stage's deadline, the signature cache and Predict.

One ``ServingClient`` (a gRPC channel and its stubs) is kept per target and shared by every
``Recommender`` of the process (``_CHANNELS``). :class:`_ServedModels` is the part of the
``Recommender`` that makes the calls: ``_call`` retries the retryable codes with jittered
exponential backoff, never past the deadline; ``_signature`` reads ``GetModelMetadata`` once
and re-reads it after ``metadata_ttl``; ``_predict`` builds the request from the signature and
rebuilds it once when a rejected request meets a changed signature (a new version).
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import threading
import time

import grpc

from recsys_tf.client.requests import (
    _FAILURES,
    DeadlineExceeded,
    RequestError,
    _error_code,
    _summary,
)
from recsys_tf.client.grpc_client import DEFAULT_SIGNATURE, ServingClient

log = logging.getLogger("recsys_tf.client")


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


# ------------------------------------------------------------------------------ per-call state
@dataclasses.dataclass
class _Call:
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
class _ServedModels:
    """Retries, deadlines, the signature cache and Predict: the calling half of ``Recommender``.

    It uses these attributes of the instance (set by ``Recommender.__init__``):
    ``max_attempts``, ``backoff``, ``retry_codes``, ``min_call_s``, ``metadata_ttl``,
    ``_rng`` (retry jitter), ``_lock`` and ``_signatures`` (the cache).
    """

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
                   force=False, label=None):
        """The model's signature, from GetModelMetadata once and then from the cache; re-read
        after ``metadata_ttl`` (or with ``force``) and a version change logged. With ``label``
        it is the labelled version's signature."""
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
            sig = self._call(f"GetModelMetadata {model}", lambda t: client.signature(
                model, signature, version=version, refresh=cached is not None or force,
                timeout=t, **by_label),
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
                 signature=DEFAULT_SIGNATURE, outputs=None, sig=None):
        """Signature -> request (``build(sig)``) -> Predict; when the server rejects the request
        (INVALID_ARGUMENT / FAILED_PRECONDITION) and the signature changed meanwhile (a new
        version), rebuild once with the new one.

        The version that answered goes to ``state.answered[which]`` when the client reports it
        (``predict(with_version=True)``); the stage then records it in ``Result.models``.
        ``sig``: the signature, when the caller has just read it."""
        if sig is None:
            sig = self._signature(which, client, model, version, signature, deadline, state,
                                  label=label)
        versioned = {"with_version": True} if _reports_version(client) else {}
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
                    output_filter=names, timeout=t, **versioned), deadline, state)
            except grpc.RpcError as e:
                if attempt or e.code() not in (grpc.StatusCode.INVALID_ARGUMENT,
                                               grpc.StatusCode.FAILED_PRECONDITION):
                    raise
                try:
                    new = self._signature(which, client, model, version, signature, deadline,
                                          state, force=True, label=label)
                except _FAILURES:
                    raise e from None
                if new == sig:
                    raise
                sig = new
                continue
            if versioned and isinstance(out, tuple):
                out, state.answered[which] = out
            if state.debug:
                log.info("Predict %s answered: %s", model, _summary(out))
            return out, sig, extra, build_ms
