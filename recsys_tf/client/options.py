"""The settings of a :class:`~recsys_tf.client.recommender.Recommender`, in one frozen value.

What a ``Recommender`` is made of (the served models' names, the tables or stores, the rules,
a ``ServingClient`` stand-in) are its arguments; how it calls them is a ``ClientOptions``:
deadlines and their stage shares, retries and backoff, the signature cache, which signatures
and outputs to use, strictness, logging and threads. Frozen, so one value can be shared by
many recommenders and changed only by making another (``options.replace(timeout=0.5)``).

Contract: ``recommend``'s whole budget is ``timeout`` seconds; retrieval must be done by
``timeout * stage_shares[0]``, ranking by ``timeout * stage_shares[1]``; the rest is kept for
re-ranking. A retry after the ``n``-th failure waits ``d / 2 + U(0, d / 2)`` with
``d = min(backoff[1], backoff[0] * 2 ** (n - 1))``, never past the stage's deadline.

Args (defaults in brackets):
  timeout: deadline of one ``recommend`` call in seconds [2.0].
  stage_shares: ``(retrieval, ranking)``: the share of ``timeout`` by whose end each stage
    must be done, ``0 < retrieval <= ranking <= 1`` [(0.4, 0.95)].
  max_attempts: calls per stage at most (1 or less = no retries) [3].
  backoff: ``(first, max)`` retry delay in seconds [(0.005, 0.1)].
  retry_resource_exhausted: also retry RESOURCE_EXHAUSTED (UNAVAILABLE always is) [False].
  metadata_ttl: seconds before a cached signature is re-read to notice a new version (None:
    only when a request is rejected) [60.0].
  min_call_s: no call is started with less than this left of its stage [0.0005].
  strict: a signature input with no value for the user is an error (``RequestError``), not
    sent as unknown [False].
  raise_errors: raise a failing stage's error instead of answering degraded [False].
  ranker_version, ranker_label: pin the ranker to a version or a version label (a canary);
    not both [None].
  ranker_target: ``host:port`` of the ranker when it is served elsewhere [None].
  ranker_output: the ranker's output to read (None: its only float output) [None].
  retrieval_signature: the retrieval signature [``serving_default``].
  ranker_signature: the ranker signature, or ``"auto"``: ``one_user`` when the ranker has it
    (the user's features sent once, not repeated per candidate), else ``serving_default``;
    a ``one_user`` request refused (TF Serving's batching) falls back for good ["auto"].
  diversity_by: what MMR measures similarity on: ``"embeddings"``, ``"category"`` or
    ``"auto"`` (embeddings when the item store has them) ["auto"].
  max_retrieval_k: the most candidates retrieval is asked for (None: the export's
    ``index_k`` when its model card has one) [None].
  debug: log every request and response at INFO on the ``recsys_tf.client`` logger [False].
  max_workers: threads of ``recommend_many`` / ``arecommend`` [4].
  max_message_mb: gRPC send/receive message limit of the shared channels [64].
  seed: seeds the retry jitter [None].

Example::

    opts = ClientOptions(timeout=0.3, stage_shares=(0.3, 0.9), max_attempts=2)
    rec = Recommender("127.0.0.1:8500", tables, ranker="dcn_v2", options=opts)
    slow = Recommender("127.0.0.1:8500", tables, options=opts.replace(timeout=5.0))
"""
from __future__ import annotations

import dataclasses

from recsys_tf.wire.contract import DEFAULT_SIGNATURE

__all__ = ["ClientOptions"]

DIVERSITY_BY = ("auto", "embeddings", "category")


@dataclasses.dataclass(frozen=True)
class ClientOptions:
    """How a ``Recommender`` calls its models (see the module docstring for each field)."""

    timeout: float = 2.0
    stage_shares: tuple = (0.4, 0.95)
    max_attempts: int = 3
    backoff: tuple = (0.005, 0.1)
    retry_resource_exhausted: bool = False
    metadata_ttl: float | None = 60.0
    min_call_s: float = 0.0005
    strict: bool = False
    raise_errors: bool = False
    ranker_version: int | None = None
    ranker_label: str | None = None
    ranker_target: str | None = None
    ranker_output: str | None = None
    retrieval_signature: str = DEFAULT_SIGNATURE
    ranker_signature: str = "auto"
    diversity_by: str = "auto"
    max_retrieval_k: int | None = None
    debug: bool = False
    max_workers: int = 4
    max_message_mb: int = 64
    seed: int | None = None

    def __post_init__(self):
        put = object.__setattr__   # normalise the values once, here (the class is frozen)
        put(self, "timeout", float(self.timeout))
        if not self.timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout}")
        shares = tuple(float(s) for s in self.stage_shares)
        if len(shares) != 2 or not (0 < shares[0] <= shares[1] <= 1):
            raise ValueError(f"stage_shares must be (retrieval, ranking) with "
                             f"0 < retrieval <= ranking <= 1, got {self.stage_shares}")
        put(self, "stage_shares", shares)
        put(self, "max_attempts", max(1, int(self.max_attempts)))   # 0 or less: one call
        backoff = tuple(float(b) for b in self.backoff)
        if len(backoff) != 2 or not (0 <= backoff[0] <= backoff[1]):
            raise ValueError(f"backoff must be (first, max) seconds with 0 <= first <= max, "
                             f"got {self.backoff}")
        put(self, "backoff", backoff)
        if self.metadata_ttl is not None and self.metadata_ttl < 0:
            raise ValueError(f"metadata_ttl must be >= 0 seconds or None, got "
                             f"{self.metadata_ttl}")
        if self.ranker_version is not None and self.ranker_label is not None:
            raise ValueError(f"give ranker_version or ranker_label, not both (got "
                             f"{self.ranker_version!r} and {self.ranker_label!r})")
        if self.diversity_by not in DIVERSITY_BY:
            raise ValueError(f"diversity_by must be one of {DIVERSITY_BY}, got "
                             f"{self.diversity_by!r}")
        if int(self.max_workers) < 1:
            raise ValueError(f"max_workers must be >= 1, got {self.max_workers}")
        put(self, "max_workers", int(self.max_workers))
        for name in ("strict", "raise_errors", "retry_resource_exhausted", "debug"):
            put(self, name, bool(getattr(self, name)))

    def replace(self, **changes) -> "ClientOptions":
        """A copy with ``changes`` (checked as the constructor checks them)."""
        return dataclasses.replace(self, **changes)
