"""Loading one version of a model, as TF Serving's SavedModel loader does.

The version folders on disk (``<base_path>/<version>/saved_model.pb``, local or a URL
``tf.io.gfile`` reads), the ``signature_def`` map read straight from ``saved_model.pb``, the
loaded SavedModel (``_Version``), how a load failure maps to a status code, and the warmup
replay of ``assets.extra/tf_serving_warmup_requests``. ``VersionLoader`` is the part of
``ModelServer`` that loads a version; it relies on ``SignatureRunner`` to run the warmup.
"""
from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import List, Optional, Set, Tuple

import grpc
import tensorflow as tf
from google.protobuf import any_pb2, text_format
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, prediction_log_pb2

from recsys_tf.wire.contract import ASSETS_EXTRA, DEFAULT_SIGNATURE, WARMUP_FILE
from recsys_tf.wire.errors import CODE_BY_VALUE, ServingError

# The whole server logs under one name, whichever module a message comes from.
log = logging.getLogger("recsys_tf.server.server")

_WARMUP_FILE = os.path.join(ASSETS_EXTRA, WARMUP_FILE)
_MAX_WARMUP_RECORDS = 1000  # TF Serving's limit


_VERSION_IDS = itertools.count()


@dataclass
class _Version:
    """One loaded version of a model: the SavedModel plus what requests need from it."""

    model: str
    version: int
    path: str
    loaded: object
    signature_defs: dict  # name -> SignatureDef proto, as stored in saved_model.pb
    functions: dict  # name -> concrete function
    metadata_any: any_pb2.Any  # SignatureDefMap packed for GetModelMetadata
    fast: dict = field(default_factory=dict)  # signature -> _FastSignature (None: unusable)
    fast_lock: threading.Lock = field(default_factory=threading.Lock)
    checks: dict = field(default_factory=dict)  # signature -> its inputs' expectations
    uid: int = field(default_factory=lambda: next(_VERSION_IDS))  # batch queue key


# --------------------------------------------------------------------------- version folders
def _is_url(path: str) -> bool:
    return "://" in path


def _join(*parts: str) -> str:
    return "/".join([parts[0].rstrip("/")] + [p.strip("/") for p in parts[1:]]) \
        if _is_url(parts[0]) else os.path.join(*parts)


def _listdir(path: str) -> List[str]:
    try:
        return [name.rstrip("/") for name in tf.io.gfile.listdir(path)]
    except Exception:  # missing folder, permissions: nothing to serve from there (yet)
        return []


def _saved_model_file(version_dir: str) -> Optional[str]:
    for name in ("saved_model.pb", "saved_model.pbtxt"):
        candidate = _join(version_dir, name)
        if tf.io.gfile.exists(candidate):
            return candidate
    return None


def _stamp(folder: str) -> tuple:
    """(files, bytes, newest mtime) of a version folder: changes when anything in it does."""
    count = size = newest = 0
    try:
        for parent, _, files in tf.io.gfile.walk(folder):
            for name in files:
                info = tf.io.gfile.stat(_join(parent, name))
                count, size = count + 1, size + info.length
                newest = max(newest, info.mtime_nsec)
    except Exception:  # vanished while scanning: treat as changed next time
        return (-1, -1, time.time())
    return (count, size, newest)


def _inside(path: str, root: str) -> bool:
    if _is_url(path) or _is_url(root):
        return path.rstrip("/").startswith(root.rstrip("/") + "/") or \
            path.rstrip("/") == root.rstrip("/")
    path, root = os.path.realpath(path), os.path.realpath(root)
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives
        return False


def _parent(path: str) -> str:
    if _is_url(path):
        return path.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(os.path.realpath(path.rstrip(os.sep)) or path)


def _read_signature_defs(version_dir: str, tags: Tuple[str, ...]) -> dict:
    """The signature_def map of the MetaGraph tagged ``tags``, read from saved_model.pb."""
    path = _saved_model_file(version_dir)
    if path is None:
        raise FileNotFoundError(f"SavedModel not found in export directory: {version_dir}")
    saved = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    if path.endswith(".pbtxt"):
        text_format.Parse(data.decode("utf-8"), saved)
    else:
        saved.ParseFromString(data)
    if not saved.meta_graphs:
        raise ValueError(f"{path} holds no MetaGraph")
    for graph in saved.meta_graphs:
        if set(tags) == set(graph.meta_info_def.tags):
            return dict(graph.signature_def)
    available = [sorted(g.meta_info_def.tags) for g in saved.meta_graphs]
    raise ValueError(f"no MetaGraph tagged {sorted(tags)} in {path} (it has {available})")


def _load_error(exc: BaseException) -> Tuple[grpc.StatusCode, str]:
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


def _register_custom_ops() -> None:
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
    """``ModelServer``'s loading of one version: SavedModel, signatures, tracing, warmup."""

    def _load_version(self, name: str, version: int, path: str) -> _Version:
        _register_custom_ops()
        start = time.perf_counter()
        signature_defs = _read_signature_defs(path, self.saved_model_tags)
        loaded = tf.saved_model.load(path, tags=list(self.saved_model_tags))
        functions = {key: loaded.signatures[key] for key in list(loaded.signatures.keys())}
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in signature_defs.items():
            sig_map.signature_def[key].CopyFrom(sig)
        packed = any_pb2.Any()
        packed.Pack(sig_map)
        ver = _Version(name, version, path, loaded, signature_defs, functions, packed)
        for key in functions:           # traced now, not on the first request
            if key in signature_defs:
                self._fast(ver, key)
        warm, replayed = self._run_warmup(ver) if self.warmup else (0, set())
        # the signatures no warmup record ran (e.g. a ranker's one_user, which the client
        # calls): run once on made-up rows, else their first request pays for the first run
        for key, fast in list(ver.fast.items()):
            if fast is not None and key not in replayed:
                fast.warm_once()
        fast = ver.fast.get(DEFAULT_SIGNATURE)
        if fast is not None and fast.batchable and self.batching is not None:
            thread = threading.Thread(target=self._warm_batches,
                                      args=(ver, fast, self.batching.warm_sizes(),
                                            self._warm_stop), daemon=True,
                                      name=f"warm-batches-{name}-{version}")
            with self._warm_lock:   # ModelServer.stop() waits for these
                self._warm_threads = [t for t in self._warm_threads if t.is_alive()]
                self._warm_threads.append(thread)
            thread.start()
        log.info("loaded model %s version %d from %s in %.2fs%s", name, version, path,
                 time.perf_counter() - start, f" ({warm} warmup requests)" if warm else "")
        return ver

    @staticmethod
    def _warm_batches(ver: _Version, fast, sizes=(), stop=None) -> None:
        """Make a version's batch functions and run the model at the batch ``sizes``
        (``_FastSignature.warm_batches``, which ends early once ``stop`` is set); logs when
        done."""
        start = time.perf_counter()
        try:
            fast.warm_batches(sizes, stop)
        except Exception as exc:  # noqa: BLE001 -- batches keep the while_loop path
            log.warning("model %s version %d: batch functions not warmed: %s", ver.model,
                        ver.version, exc)
            return
        if stop is not None and stop.is_set():
            log.info("model %s version %d: making batch functions stopped with the server",
                     ver.model, ver.version)
            return
        log.info("model %s version %d: batch functions warmed in %.2fs (batch sizes run: %s)",
                 ver.model, ver.version, time.perf_counter() - start,
                 ", ".join(map(str, fast.warmed_sizes)) or "none")

    def _run_warmup(self, ver: _Version) -> Tuple[int, Set[str]]:
        """Replay the version's warmup records; any failure fails the load, as in TF Serving.
        Returns the requests run and the signatures they named."""
        path = _join(ver.path, _WARMUP_FILE)
        if not tf.io.gfile.exists(path):
            return 0, set()
        done, names = 0, set()
        for i, record in enumerate(tf.data.TFRecordDataset(path)):
            if i >= _MAX_WARMUP_RECORDS:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Number of warmup records exceeds the maximum "
                                   f"({_MAX_WARMUP_RECORDS}) at {path}")
            entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            kind = entry.WhichOneof("log_type")
            if kind != "predict_log":
                log.warning("model %s version %d: %s warmup records are not replayed",
                            ver.model, ver.version, kind)
                continue
            request = entry.predict_log.request
            for _ in range(self.warmup_iterations):
                try:
                    self._run_predict(ver, request, batch=False)
                except ServingError as exc:
                    raise ServingError(exc.code, f"warmup request {i} failed: {exc.message}") \
                        from None
                done += 1
            names.add(request.model_spec.signature_name or DEFAULT_SIGNATURE)
        return done, names
