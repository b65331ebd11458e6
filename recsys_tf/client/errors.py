"""The client's own errors and how a failure is named in a ``Result``.

:class:`RequestError` (a request that does not fit the model's signature, raised before it is
sent) and :class:`DeadlineExceeded` (a stage's share of the deadline ran out) sit beside
``grpc.RpcError``: the three are :data:`FAILURES`, what a stage may fail with and the
``Recommender`` answers degraded. :func:`error_code` / :func:`error_text` name any of them the
same way (``"UNAVAILABLE"``, ``"INVALID_REQUEST: deepfm: input 'hour': ..."``).

Example::

    try:
        rec.recommend("u1")
    except FAILURES as e:
        print(error_code(e))
"""
from __future__ import annotations

import grpc

__all__ = ["RequestError", "DeadlineExceeded", "FAILURES", "error_code", "error_text"]


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


FAILURES = (grpc.RpcError, RequestError, DeadlineExceeded)


def error_code(err) -> str:
    """The status code's name of a gRPC error, or the ``code`` of the client's own errors."""
    if isinstance(err, grpc.RpcError) and callable(getattr(err, "code", None)):
        return err.code().name
    return getattr(err, "code", None) or type(err).__name__


def error_text(err) -> str:
    """``"CODE: details"``."""
    if isinstance(err, grpc.RpcError) and callable(getattr(err, "details", None)):
        return f"{error_code(err)}: {err.details()}"
    return f"{error_code(err)}: {err}"
