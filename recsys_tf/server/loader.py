"""Loading one version of a model, as TF Serving's SavedModel bundle loads it.

The version folders on disk (``<base_path>/<version>/saved_model.pb``, local or a URL
``tf.io.gfile`` reads), how a load failure maps to a status code, and ``VersionLoader``, which
loads a version into a TensorFlow graph and session of its own
(``tf.compat.v1.saved_model.loader.load``: the MetaGraph tagged ``saved_model_tags`` is
imported, its variables restored and its init ops run), exactly as TF Serving's
``LoadSavedModel`` does. Any SavedModel TF Serving serves loads: TF1 graphs (placeholders,
reference variables, ``ParseExample`` inputs), TF2 functions (``tf.saved_model.save``, our
exports) and graphs using ScaNN's ops (registered before the first load). The signatures
are then run by name on that session (``recsys_tf.server.runner``).

Loading ends with the warmup: ``assets.extra/tf_serving_warmup_requests`` is replayed (a
failing record fails the load, as in TF Serving), then each signature no record named is run
once on made-up rows (whose failure is ignored), so the first request does not pay for a
signature's first run.

Example::

    loader = VersionLoader(runner, tags=("serve",), session_config=ConfigProto())
    version = loader.load("ranker", 3, "saved_models/ranker/3")
"""
from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional, Set, Tuple

import grpc
import tensorflow as tf
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from tensorflow_serving.apis import get_model_metadata_pb2, prediction_log_pb2

from recsys_tf.wire.contract import ASSETS_EXTRA, DEFAULT_SIGNATURE, WARMUP_FILE
from recsys_tf.wire.errors import CODE_BY_VALUE, ServingError

if TYPE_CHECKING:
    from recsys_tf.server.runner import Runner

# The whole server logs under one name, whichever module a message comes from.
log = logging.getLogger("recsys_tf.server.server")

WARMUP_PATH = os.path.join(ASSETS_EXTRA, WARMUP_FILE)
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit

_VERSION_IDS = itertools.count()


@dataclass(eq=False)
class Version:
    """One loaded version of a model: its session and what requests need from it.

    ``signature_defs`` maps each signature key to its ``SignatureDef`` proto; ``session`` runs
    them (fed and fetched by the tensor names the SignatureDefs give); ``callables`` caches
    one callable per (signature, outputs) (``Runner``); ``uid`` keys its batch queues."""

    model: str
    version: int
    path: str
    session: object  # tf.compat.v1.Session over the version's own graph
    signature_defs: Dict[str, object]
    metadata_any: any_pb2.Any  # SignatureDefMap packed for GetModelMetadata
    callables: dict = field(default_factory=dict)
    checks: dict = field(default_factory=dict)  # signature -> its inputs' expectations
    lock: threading.Lock = field(default_factory=threading.Lock)
    uid: int = field(default_factory=lambda: next(_VERSION_IDS))


# --------------------------------------------------------------------------- version folders
def is_url(path: str) -> bool:
    return "://" in path


def join(*parts: str) -> str:
    return "/".join([parts[0].rstrip("/")] + [p.strip("/") for p in parts[1:]]) \
        if is_url(parts[0]) else os.path.join(*parts)


def listdir(path: str) -> List[str]:
    try:
        return [name.rstrip("/") for name in tf.io.gfile.listdir(path)]
    except Exception:  # missing folder, permissions: nothing to serve from there (yet)
        return []


def saved_model_file(version_dir: str) -> Optional[str]:
    for name in ("saved_model.pb", "saved_model.pbtxt"):
        candidate = join(version_dir, name)
        if tf.io.gfile.exists(candidate):
            return candidate
    return None


def stamp(folder: str) -> tuple:
    """(files, bytes, newest mtime) of a version folder: changes when anything in it does."""
    count = size = newest = 0
    try:
        for parent, _, files in tf.io.gfile.walk(folder):
            for name in files:
                info = tf.io.gfile.stat(join(parent, name))
                count, size = count + 1, size + info.length
                newest = max(newest, info.mtime_nsec)
    except Exception:  # vanished while scanning: treat as changed next time
        return (-1, -1, time.time())
    return (count, size, newest)


def inside(path: str, root: str) -> bool:
    if is_url(path) or is_url(root):
        return path.rstrip("/").startswith(root.rstrip("/") + "/") or \
            path.rstrip("/") == root.rstrip("/")
    path, root = os.path.realpath(path), os.path.realpath(root)
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives
        return False


def parent(path: str) -> str:
    if is_url(path):
        return path.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(os.path.realpath(path.rstrip(os.sep)) or path)


def load_error(exc: BaseException) -> Tuple[grpc.StatusCode, str]:
    if isinstance(exc, ServingError):
        return exc.code, exc.message
    if isinstance(exc, tf.errors.OpError):
        return CODE_BY_VALUE.get(exc.error_code, grpc.StatusCode.UNKNOWN), exc.message
    if isinstance(exc, DecodeError):
        return grpc.StatusCode.DATA_LOSS, f"cannot parse saved_model.pb: {exc}"
    if isinstance(exc, FileNotFoundError):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    return grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- loading
_custom_ops_lock = threading.Lock()
_custom_ops_done = False


def register_custom_ops() -> None:
    """Make ScaNN's TF ops known before loading: ScaNN SavedModels cannot load without them."""
    global _custom_ops_done
    with _custom_ops_lock:
        if _custom_ops_done:
            return
        _custom_ops_done = True
        try:
            import scann  # noqa: F401  (importing registers the Scann* ops with TensorFlow)
        except Exception as exc:  # optional: only SavedModels using ScaNN need it
            log.debug("ScaNN ops not registered (%s); ScaNN SavedModels will not load", exc)


class VersionLoader:
    """Loads a version into a session of its own and warms it up.

    Args:
      runner: the ``Runner`` that replays the warmup records and warms each signature.
      tags: the MetaGraph tags to load (default ``("serve",)``).
      session_config: the ``ConfigProto`` of each session (thread pools); None: defaults.
      warmup: replay ``assets.extra/tf_serving_warmup_requests`` (default True).
      warmup_iterations: times each record is replayed (default 1).
    """

    def __init__(self, runner: "Runner", tags: Tuple[str, ...] = ("serve",),
                 session_config=None, warmup: bool = True, warmup_iterations: int = 1):
        self.runner = runner
        self.tags = tuple(tags)
        self.session_config = session_config
        self.warmup = bool(warmup)
        self.warmup_iterations = max(1, int(warmup_iterations))

    def load(self, name: str, version: int, path: str) -> Version:
        """Load, warm up and return one version; raises what the load raised."""
        register_custom_ops()
        start = time.perf_counter()
        if saved_model_file(path) is None:
            raise FileNotFoundError(f"SavedModel not found in export directory: {path}")
        graph = tf.Graph()
        session = tf.compat.v1.Session(graph=graph, config=self.session_config)
        try:
            with graph.as_default():
                meta_graph = tf.compat.v1.saved_model.loader.load(session, list(self.tags),
                                                                   path)
        except BaseException:
            session.close()
            raise
        graph.finalize()  # nothing is added to a served graph
        signature_defs = dict(meta_graph.signature_def)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in signature_defs.items():
            sig_map.signature_def[key].CopyFrom(sig)
        packed = any_pb2.Any()
        packed.Pack(sig_map)
        ver = Version(name, version, path, session, signature_defs, packed)
        try:
            warm, replayed = self.run_warmup(ver) if self.warmup else (0, set())
            for key in signature_defs:
                # keys starting "__" are TensorFlow's own (__saved_model_init_op): not run again
                if key not in replayed and not key.startswith("__"):
                    self.runner.warm(ver, key)
        except BaseException:   # a failed warmup fails the load: its session goes with it
            session.close()
            raise
        log.info("loaded model %s version %d from %s in %.2fs%s", name, version, path,
                 time.perf_counter() - start, f" ({warm} warmup requests)" if warm else "")
        return ver

    def run_warmup(self, ver: Version) -> Tuple[int, Set[str]]:
        """Replay the version's warmup records; any failure fails the load, as in TF Serving.
        Returns the requests run and the signatures they named."""
        path = join(ver.path, WARMUP_PATH)
        if not tf.io.gfile.exists(path):
            return 0, set()
        done, names = 0, set()
        for i, record in enumerate(tf.data.TFRecordDataset(path)):
            if i >= MAX_WARMUP_RECORDS:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Number of warmup records exceeds the maximum "
                                   f"({MAX_WARMUP_RECORDS}) at {path}")
            try:
                entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            except DecodeError as exc:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"warmup record {i} at {path} is not a PredictionLog: "
                                   f"{exc}") from None
            kind = entry.WhichOneof("log_type")
            if kind != "predict_log":
                log.warning("model %s version %d: %s warmup records are not replayed",
                            ver.model, ver.version, kind)
                continue
            request = entry.predict_log.request
            for _ in range(self.warmup_iterations):
                try:
                    self.runner.predict(ver, request, batch=False)
                except ServingError as exc:
                    raise ServingError(exc.code, f"warmup request {i} failed: {exc.message}") \
                        from None
                done += 1
            names.add(request.model_spec.signature_name or DEFAULT_SIGNATURE)
        return done, names
