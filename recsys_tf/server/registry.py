"""Which models and versions the server serves, and swapping them in.

The model list (one model, a ``ModelServerConfig``, or every ``<name>/`` under a root), the
version policies and labels, the rescan that loads new versions before letting old ones go
(TF Serving's availability-preserving policy, with load retries), the polling of the folders
and of the config file, and resolving a ``ModelSpec`` to a loaded version. ``ModelRegistry``
is that part of ``ModelServer``.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import grpc
import numpy as np
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from recsys_tf.server.loader import (
    Version,
    VersionLoader,
    inside,
    is_url,
    join,
    listdir,
    load_error,
    parent,
    saved_model_file,
    stamp,
)
from recsys_tf.server.metrics import Metrics
from recsys_tf.server.options import ServerOptions
from recsys_tf.wire.errors import invalid, not_found

# The whole server logs under one name, whichever module a message comes from.
log = logging.getLogger("recsys_tf.server.server")

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}$")


@dataclass
class _Policy:
    """Which of the versions found on disk to serve."""

    kind: str = "latest"  # "latest" | "all" | "specific"
    num_versions: int = 1
    versions: Tuple[int, ...] = ()

    def select(self, available: Iterable[int]) -> List[int]:
        available = sorted(available)
        if self.kind == "all":
            return available
        if self.kind == "specific":
            return [v for v in available if v in set(self.versions)]
        return available[-max(1, self.num_versions):] if available else []

    @classmethod
    def parse(cls, value) -> "_Policy":
        if value is None or isinstance(value, _Policy):
            return value or cls()
        if isinstance(value, str):
            if value == "all":
                return cls("all")
            if value == "latest":
                return cls()
            raise ValueError(f"unknown version policy {value!r}: use 'latest', 'all', an int "
                             "(latest N) or a list of versions")
        if isinstance(value, (int, np.integer)):
            return cls("latest", num_versions=int(value))
        return cls("specific", versions=tuple(int(v) for v in value))

    @classmethod
    def from_proto(cls, config) -> "_Policy":
        which = config.model_version_policy.WhichOneof("policy_choice")
        if which == "all":
            return cls("all")
        if which == "specific":
            versions = tuple(config.model_version_policy.specific.versions)
            if not versions:
                raise ValueError(f"model {config.name!r}: the specific version policy lists no "
                                 "versions")
            return cls("specific", versions=versions)
        if which == "latest":
            return cls("latest", num_versions=config.model_version_policy.latest.num_versions or 1)
        return cls()


@dataclass
class _Failure:
    stamp: tuple
    attempts: int
    next_try: float


@dataclass
class _Model:
    name: str
    base_path: str
    policy: _Policy = field(default_factory=_Policy)
    labels: Dict[str, int] = field(default_factory=dict)
    # Replaced wholesale (never mutated) so a reader's snapshot stays consistent.
    versions: Dict[int, Version] = field(default_factory=dict)
    # version -> (state name, status code, message): what GetModelStatus reports; versions
    # that were served and let go stay as END, as TF Serving's state monitor keeps them.
    states: Dict[int, Tuple[str, grpc.StatusCode, str]] = field(default_factory=dict)
    failures: Dict[int, _Failure] = field(default_factory=dict)
    warned_empty: bool = False
    kept_stale: bool = False


def check_model_name(name: str) -> None:
    """Model names are plain names: letters, digits, ``_ . -``; no separators, no ``..``."""
    if not _NAME_RE.match(name or "") or ".." in name:
        raise ValueError(f"model name {name!r} is not allowed: use letters, digits, '_', '.' "
                         "and '-' (no path separators, no '..')")


class Registry:
    """The served models: configuration, rescans, hot swap, polling, lookup.

    Args:
      options: the ``ServerOptions`` (models, version policy, root, polling, load retries).
      loader: the ``VersionLoader`` that loads one version.
      metrics: the ``Metrics`` load attempts are counted in.
    """

    def __init__(self, options: ServerOptions, loader: VersionLoader, metrics: Metrics):
        self.loader = loader
        self.metrics = metrics
        self.poll_seconds = options.poll_seconds
        self.config_poll_seconds = options.model_config_file_poll_wait_seconds
        self.max_load_retries = options.max_num_load_retries
        self.load_retry_interval = options.load_retry_interval
        self._lock = threading.RLock()  # guards _models and each model's maps
        self._reload_lock = threading.Lock()  # one rescan at a time
        self._models: Dict[str, _Model] = {}
        self._root: Optional[str] = None
        self._root_policy = _Policy.parse(options.version_policy)
        self._config_file: Optional[str] = None
        self._config_text: Optional[str] = None
        self._config_dir = os.getcwd()
        self.loaded_once = False
        self._stop_polling = threading.Event()
        self._poller: Optional[threading.Thread] = None
        model_root = options.model_root
        if options.model_config_file is not None:
            self._config_file = os.path.abspath(options.model_config_file)
            self._config_dir = os.path.dirname(self._config_file)
            self._config_text = self._read_config_text(self._config_file)
            config = self._parse_config(self._config_text, self._config_file)
            self._roots = [model_root] if model_root else sorted(
                {parent(self._abs(c.base_path)) for c in config.model_config_list.config}) \
                or [self._config_dir]
            self._apply_config(config)
        elif options.model_name is not None:
            check_model_name(options.model_name)
            base = self._abs(options.model_base_path)
            self._roots = [model_root or parent(base)]
            self._check_root(base, options.model_name)
            self._models[options.model_name] = _Model(options.model_name, base,
                                                      self._root_policy)
        else:
            self._root = self._abs(options.model_base_path)
            self._roots = [model_root or self._root]
            self._check_root(self._root, "(root)")

    # ----------------------------------------------------------------- configuration
    def _abs(self, path: str) -> str:
        if is_url(path) or os.path.isabs(path):
            return path
        return os.path.normpath(os.path.join(self._config_dir, path))

    def _check_root(self, path: str, name: str) -> None:
        if not any(inside(path, root) for root in self._roots):
            raise ValueError(f"model {name}: base path {path} is outside the model root "
                             f"({', '.join(self._roots)})")

    @staticmethod
    def _read_config_text(path: str) -> str:
        with open(path, "r", encoding="utf-8") as f:
            return f.read()

    @staticmethod
    def _parse_config(text: str, source: str = "<config>"):
        config = model_server_config_pb2.ModelServerConfig()
        try:
            text_format.Parse(text, config)
        except text_format.ParseError as exc:  # TF Serving's (protobuf's) wording
            raise ValueError(f"Error parsing text-format {config.DESCRIPTOR.full_name}: {exc} "
                             f"(in {source})") from exc
        return config

    def _apply_config(self, config) -> None:
        """Replace the served model list with a ModelServerConfig's (kept versions stay loaded)."""
        if config.WhichOneof("config") != "model_config_list":
            raise ValueError("only model_config_list configs are supported")
        wanted: Dict[str, _Model] = {}
        for entry in config.model_config_list.config:
            if not entry.name:
                raise ValueError("a model config entry has no name")
            check_model_name(entry.name)
            if entry.name in wanted:
                raise ValueError(f"model {entry.name!r} is configured twice")
            if not entry.base_path:
                raise ValueError(f"model {entry.name!r} has no base_path")
            if entry.model_platform not in ("", "tensorflow"):
                raise ValueError(f"model {entry.name!r}: platform {entry.model_platform!r} "
                                 "is not supported (only 'tensorflow')")
            base = self._abs(entry.base_path)
            self._check_root(base, entry.name)
            for label in entry.version_labels:
                if not label or not _NAME_RE.match(label):
                    raise ValueError(f"model {entry.name!r}: bad version label {label!r}")
            wanted[entry.name] = _Model(entry.name, base, _Policy.from_proto(entry),
                                        dict(entry.version_labels))
        with self._lock:
            for name, model in wanted.items():
                old = self._models.get(name)
                if old is not None and old.base_path == model.base_path:
                    model.versions, model.states = old.versions, old.states
                    model.failures = old.failures
            removed = {n: m for n, m in self._models.items() if n not in wanted}
            self._models = wanted
            self._root = None
        for name, model in removed.items():
            for version in sorted(model.versions):
                log.info("unloaded model %s version %d (model removed from the config)",
                         name, version)

    def reload_config(self, config) -> Dict[str, List[int]]:
        """Serve the models of a new ``ModelServerConfig`` (proto, text, or file path)."""
        if isinstance(config, str):
            if os.path.exists(config):
                config = self._parse_config(self._read_config_text(config), config)
            else:
                config = self._parse_config(config)
        with self._reload_lock:
            self._apply_config(config)
        return self.reload()

    # ----------------------------------------------------------------- loading
    def reload(self) -> Dict[str, List[int]]:
        """Rescan the version folders; load new versions, then drop those no longer wanted.

        Returns ``{model: [served versions]}``.
        """
        with self._reload_lock:
            if self._root is not None:
                self._sync_root()
                if not self._models:
                    log.warning("no models (<name>/<version>/saved_model.pb) found under %s",
                                self._root)
            with self._lock:
                models = list(self._models.values())
            for model in models:
                try:
                    self._reload_model(model)
                except Exception:  # one model's trouble must not stop the others
                    log.exception("rescan of model %s failed", model.name)
            self.loaded_once = True
        return self.models()

    def _sync_root(self) -> None:
        root = self._root
        if self._list_versions(root, "(root)"):  # the root is itself one model's folder
            names = {os.path.basename(root.rstrip("/")): root}
        else:
            names = {}
            for name in listdir(root):
                if name.startswith(".") or not _NAME_RE.match(name) or ".." in name:
                    continue
                folder = join(root, name)
                if any(sub.isdigit() for sub in listdir(folder)):
                    names[name] = folder
        with self._lock:
            for name in sorted(set(self._models) - set(names)):
                model = self._models.pop(name)
                for version in sorted(model.versions):
                    log.info("unloaded model %s version %d (its folder is gone)", name, version)
            for name, folder in names.items():
                if name not in self._models:
                    self._models[name] = _Model(name, folder, self._root_policy)

    def _list_versions(self, base_path: str, name: str) -> Dict[int, str]:
        """{version: folder} for every numeric sub-folder that holds a saved_model.pb and lies
        inside the model root (symlinks resolved)."""
        found = {}
        for entry in listdir(base_path):
            if not entry.isdigit():
                continue
            folder = join(base_path, entry)
            if saved_model_file(folder) is None:
                continue
            if not any(inside(folder, root) for root in self._roots):
                log.error("model %s: version folder %s resolves outside the model root; "
                          "ignored", name, folder)
                continue
            found[int(entry)] = folder
        return found

    def _reload_model(self, model: _Model) -> None:
        on_disk = self._list_versions(model.base_path, model.name)
        wanted = model.policy.select(on_disk)
        if not on_disk and not model.warned_empty:
            log.warning("No versions of servable %s found under base path %s",
                        model.name, model.base_path)
            model.warned_empty = True
        elif on_disk:
            model.warned_empty = False
        with self._lock:
            current = model.versions
        new = {v: current[v] for v in wanted if v in current}
        now = time.monotonic()
        for version in wanted:
            if version in current:
                continue
            path = on_disk[version]
            folder_stamp = stamp(path)
            failure = model.failures.get(version)
            if failure is not None and failure.stamp == folder_stamp and (
                    failure.attempts > self.max_load_retries or now < failure.next_try):
                continue  # failed before, unchanged since: retry only as configured
            attempts = 1 if failure is None or failure.stamp != folder_stamp \
                else failure.attempts + 1
            with self._lock:
                model.states[version] = ("LOADING", grpc.StatusCode.OK, "")
            try:
                new[version] = self.loader.load(model.name, version, path)
            except Exception as exc:
                code, message = load_error(exc)
                log.error("failed to load model %s version %d from %s: %s: %s", model.name,
                          version, path, code.name, message.splitlines()[0] if message else "")
                log.debug("load failure detail", exc_info=True)
                self.metrics.record_load(path, code.name)
                with self._lock:
                    model.states[version] = ("END", code, message)
                    model.failures[version] = _Failure(folder_stamp, attempts,
                                                       now + self.load_retry_interval)
                continue
            self.metrics.record_load(path, "OK")
            with self._lock:
                model.failures.pop(version, None)
        for version in list(model.failures):
            if version not in on_disk:
                model.failures.pop(version, None)
        if current and wanted and not new:
            # Availability first (TF Serving's availability-preserving policy): nothing the
            # policy wants could be loaded, so the versions served now stay.
            if not model.kept_stale:
                log.warning("model %s: no wanted version %s could be loaded; still serving %s",
                            model.name, wanted, sorted(current))
                model.kept_stale = True
            return
        model.kept_stale = False
        dropped = sorted(set(current) - set(new))
        with self._lock:
            model.versions = dict(sorted(new.items()))  # route to the new set ...
            for version in new:
                model.states[version] = ("AVAILABLE", grpc.StatusCode.OK, "")
            for version in dropped:
                model.states[version] = ("UNLOADING", grpc.StatusCode.OK, "")
        for version in dropped:  # ... then let the old ones go (requests in flight keep them)
            with self._lock:
                model.states[version] = ("END", grpc.StatusCode.OK, "")
            log.info("unloaded model %s version %d", model.name, version)

    def models(self) -> Dict[str, List[int]]:
        """``{model: [served versions]}``."""
        with self._lock:
            return {name: sorted(m.versions) for name, m in self._models.items()}

    # ----------------------------------------------------------------- polling
    def start_polling(self) -> None:
        """Rescan the folders (and re-read the config file) in a thread, as configured."""
        if self._poller is not None:
            return
        if self.poll_seconds > 0 or (self.config_poll_seconds > 0 and self._config_file):
            self._stop_polling.clear()
            self._poller = threading.Thread(target=self._poll, name="model-server-poll",
                                            daemon=True)
            self._poller.start()

    def stop_polling(self) -> None:
        self._stop_polling.set()
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.join(timeout=10)

    def _poll(self) -> None:
        next_fs = time.monotonic() + self.poll_seconds if self.poll_seconds > 0 else None
        next_cfg = time.monotonic() + self.config_poll_seconds \
            if self.config_poll_seconds > 0 and self._config_file else None
        while True:
            due = min(t for t in (next_fs, next_cfg) if t is not None)
            if self._stop_polling.wait(max(0.0, due - time.monotonic())):
                return
            now = time.monotonic()
            if next_cfg is not None and now >= next_cfg:
                next_cfg = now + self.config_poll_seconds
                self._poll_config_file()
            if next_fs is not None and now >= next_fs:
                try:
                    self.reload()
                except Exception:
                    log.exception("model rescan failed")
                next_fs = time.monotonic() + self.poll_seconds

    def _poll_config_file(self) -> None:
        try:
            text = self._read_config_text(self._config_file)
        except OSError as exc:
            log.error("cannot read model config %s: %s", self._config_file, exc)
            return
        if text == self._config_text:
            return
        try:
            self.reload_config(self._parse_config(text, self._config_file))
            self._config_text = text
            log.info("applied the changed model config %s", self._config_file)
        except Exception as exc:
            self._config_text = text  # do not retry a broken file until it changes again
            log.error("ignoring the changed model config %s: %s", self._config_file, exc)

    # ----------------------------------------------------------------- resolving
    def served_name(self, name: str) -> str:
        """``name`` when it is a configured model, else "" (the metrics' label for unknowns)."""
        with self._lock:
            return name if name in self._models else ""

    def states(self, name: str) -> Dict[int, Tuple[str, grpc.StatusCode, str]]:
        """``{version: (state, code, message)}`` of a model, as GetModelStatus reports them
        (empty for an unknown model)."""
        with self._lock:
            model = self._models.get(name)
            return dict(model.states) if model is not None else {}

    def resolve(self, spec) -> Version:
        """The loaded version a ``ModelSpec`` asks for; raises NOT_FOUND / INVALID_ARGUMENT."""
        with self._lock:
            model = self._models.get(spec.name)
            versions = model.versions if model is not None else {}
            labels = model.labels if model is not None else {}
        choice = spec.WhichOneof("version_choice")
        if choice == "version_label":
            if spec.version_label not in labels:
                raise invalid(f"Unrecognized servable version label: {spec.version_label}")
            number = labels[spec.version_label]
            request = f"Specific({spec.name}, {number})"
        elif choice == "version":
            number = spec.version.value
            request = f"Specific({spec.name}, {number})"
        else:
            number = max(versions) if versions else None
            request = f"Latest({spec.name})"
        if number is None or number not in versions:
            raise not_found(f"Servable not found for request: {request}")
        return versions[number]
