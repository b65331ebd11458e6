"""What the benchmarks share: the bundled server, percentiles, machine info, ports, results.

Every script in ``benchmarks/`` measures one thing side by side in one run; the plumbing
around the measuring lives here, once:

* ``start_server(model_base_path, ...)`` starts the bundled TF Serving-compatible server
  either in this process (``recsys_tf.server.ModelServer``) or as a ``recsys-tf serve``
  subprocess (``python -m recsys_tf.cli serve``, so the checkout's code is the one run), on
  127.0.0.1 and a port the OS picks, and returns only once ``GetModelStatus`` answers
  ``AVAILABLE`` for every model it serves (or raises ``RuntimeError`` after ``timeout``
  seconds, with the server's last log lines). ``BundledServer.stop()`` /
  ``stop_servers(...)`` stop it (terminate, then kill after ``grace`` seconds); servers
  still running when the interpreter exits are stopped too.
* ``percentiles(values_ms)`` -> ``{"p50_ms", "p90_ms", "p99_ms"}`` (NaN for no values).
* ``machine_info()``: CPU model, cores (all and usable), load average, memory,
  Python / TensorFlow / numpy versions and the checkout's git commit.
* ``free_port()``: a free TCP port on 127.0.0.1.
* ``write_results(result, out, plot)``: the JSON (``benchmarks/results/NAME.json`` by
  default) and its PNG plot beside it; ``pyplot()`` and ``save_figure(fig, path)`` for the
  plots (Agg backend, no display needed).

Example::

    from common import machine_info, percentiles, start_server, write_results

    with start_server("/tmp/saved_models") as server:   # a subprocess; in_process=True too
        lat = [...]  # ms per request against server.target
    write_results({"machine": machine_info(), **percentiles(lat)}, "/tmp/example.json")
    # a bare name, e.g. "serving", writes benchmarks/results/serving.json

The scripts import it as ``common`` (``python benchmarks/NAME.py`` puts ``benchmarks/`` on
the path first); importing it puts the checkout's root on the path too, so the scripts and
the servers they start run the checkout's ``recsys_tf``.
"""
from __future__ import annotations

import atexit
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

_RUNNING: List["BundledServer"] = []    # stopped at exit if a benchmark did not


# --------------------------------------------------------------------------- small helpers
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS's pick)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def percentiles(values_ms: Sequence[float], qs: Iterable[int] = (50, 90, 99),
                prefix: str = "", digits: Optional[int] = None) -> Dict[str, float]:
    """``{prefix + "p50_ms": ..., "p90_ms": ..., "p99_ms": ...}`` of ``values_ms``.

    Args:
      values_ms: latencies in milliseconds (any sequence; empty gives NaN).
      qs: the percentiles (default 50, 90, 99).
      prefix: put before each key, e.g. ``"e2e_"`` -> ``e2e_p50_ms``.
      digits: round to this many decimals (default: no rounding).
    """
    import numpy as np

    values = np.asarray(list(values_ms), dtype=float)
    out = {}
    for q in qs:
        v = float(np.percentile(values, q)) if values.size else math.nan
        out[f"{prefix}p{q}_ms"] = v if digits is None else round(v, digits)
    return out


def load_average() -> Optional[List[float]]:
    """The 1, 5 and 15-minute load averages, rounded (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _cpu_model() -> Optional[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f
                         if ln.startswith("model name")), None)
    except OSError:
        return platform.processor() or None


def _memory_gb() -> Dict[str, float]:
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    out[f"memory_{key[3:].lower()}_gb"] = round(int(rest.split()[0]) / 2**20, 2)
    except OSError:
        pass
    return out


def _version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> Optional[str]:
    """The checkout's commit, ``+dirty`` when tracked files have changes (None outside git)."""
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(**extra) -> dict:
    """What a result needs to be read later: CPU model, cores, load average, memory,
    versions and the git commit. ``extra`` is merged in (e.g. ``deepctr=...``)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {"cpu_model": _cpu_model(), "cpu_count": os.cpu_count(), "cpus_usable": usable,
            "load_average_1_5_15min": load_average(), **_memory_gb(),
            "platform": platform.platform(), "python": platform.python_version(),
            "tensorflow": _version("tensorflow"), "numpy": _version("numpy"),
            "recsys_tf": getattr(sys.modules.get("recsys_tf"), "__version__", None)
            or _version("recsys_tf"),
            "git_commit": git_commit()}
    info.update(extra)
    return info


# --------------------------------------------------------------------------- results
def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str, dpi: int = 110) -> str:
    """Lay out, write ``path`` (its folder made) and close ``fig``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def result_path(out: str) -> str:
    """``out`` as given when it is a path (has a folder or ends in .json), else
    ``benchmarks/results/<out>.json``."""
    if os.path.dirname(out) or out.endswith(".json"):
        return out
    return os.path.join(RESULTS, out + ".json")


def write_results(result: dict, out: str, plot: Optional[Callable[[dict, str], object]] = None,
                  plot_path: Optional[str] = None):
    """Write ``result`` as JSON to ``result_path(out)`` and, with ``plot``, call
    ``plot(result, png)`` for the PNG beside it (``plot_path`` to put it elsewhere).
    Returns ``(json_path, png_path or None)``."""
    path = result_path(out)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2, default=float)
    png = None
    if plot is not None:
        png = plot_path or os.path.splitext(path)[0] + ".png"
        plot(result, png)
    return path, png


# --------------------------------------------------------------------------- the server
def served_models(model_base_path: str) -> List[str]:
    """The model names a root serves: the folders holding a numeric version folder."""
    names = []
    for name in sorted(os.listdir(model_base_path)):
        folder = os.path.join(model_base_path, name)
        if os.path.isdir(folder) and any(v.isdigit() and os.path.isdir(os.path.join(folder, v))
                                         for v in os.listdir(folder)):
            names.append(name)
    return names


def wait_until_available(target: str, models: Sequence[str], timeout: float = 300.0,
                         alive: Optional[Callable[[], bool]] = None,
                         log_tail: Optional[Callable[[], str]] = None) -> None:
    """Poll ``GetModelStatus`` at ``target`` until every model in ``models`` has a version
    ``AVAILABLE``; ``RuntimeError`` after ``timeout`` seconds or when ``alive()`` turns
    False (a server process that exited), naming the models still missing."""
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    deadline = time.monotonic() + timeout
    waiting, last_error = list(models), {}
    with grpc.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        while waiting:
            for model in list(waiting):
                request = get_model_status_pb2.GetModelStatusRequest()
                request.model_spec.name = model
                try:
                    response = stub.GetModelStatus(request, timeout=5)
                except grpc.RpcError as exc:
                    last_error[model] = f"{exc.code().name}: {exc.details()}"
                    continue
                if any(s.state == available for s in response.model_version_status):
                    waiting.remove(model)
                else:
                    last_error[model] = "states " + ", ".join(
                        get_model_status_pb2.ModelVersionStatus.State.Name(s.state)
                        for s in response.model_version_status)
            if not waiting:
                return
            stopped = alive is not None and not alive()
            if stopped or time.monotonic() > deadline:
                why = "exited" if stopped else f"did not make them AVAILABLE in {timeout:g} s"
                detail = "; ".join(f"{m}: {last_error.get(m, 'no answer')}" for m in waiting)
                tail = log_tail() if log_tail is not None else ""
                raise RuntimeError(f"the server at {target} {why}: models {waiting} not "
                                   f"AVAILABLE ({detail})" + (f"\nits log:\n{tail}" if tail
                                                              else ""))
            time.sleep(0.25)


class _LogLines(logging.Handler):
    def __init__(self, lines):
        super().__init__(logging.INFO)
        self.lines = lines

    def emit(self, record):
        self.lines.append(record.getMessage())


class BundledServer:
    """The bundled server on 127.0.0.1, in this process or as a ``recsys-tf serve``
    subprocess; see ``start_server``. ``target`` is ``"127.0.0.1:PORT"``, ``pid`` the
    process serving (this one in-process), ``lines`` its log so far."""

    def __init__(self, model_base_path: str, models: Optional[Sequence[str]] = None,
                 in_process: bool = False, args: Sequence[str] = (), cpus=None,
                 rest_api_port: Optional[int] = None, timeout: float = 300.0,
                 **server_options):
        if in_process and (args or cpus):
            raise ValueError("args and cpus are for a subprocess server; in-process, give "
                             "ModelServer's keyword options instead")
        if not in_process and server_options:
            raise ValueError(f"options {sorted(server_options)} are ModelServer's; a subprocess "
                             "server takes `recsys-tf serve` flags in args")
        self.model_base_path = os.path.abspath(model_base_path)
        self.models = list(models) if models is not None else served_models(self.model_base_path)
        if not self.models:
            raise ValueError(f"no <name>/<version>/ model folders under {self.model_base_path!r}")
        self.in_process = in_process
        self.lines: List[str] = []
        self.proc = None
        self.server = None
        self.port = None
        self.rest_port = None
        _RUNNING.append(self)
        try:
            if in_process:
                self._start_in_process(rest_api_port, server_options)
            else:
                self._start_subprocess(args, cpus, rest_api_port, timeout)
            wait_until_available(self.target, self.models, timeout, alive=self.alive,
                                 log_tail=self.log_tail)
        except BaseException:
            self.stop()
            raise

    # -- starting
    def _start_in_process(self, rest_api_port, options):
        from recsys_tf.server import ModelServer

        self._handler = _LogLines(self.lines)
        self._logger = logging.getLogger("recsys_tf.server.server")
        self._logger.addHandler(self._handler)
        if self._logger.getEffectiveLevel() > logging.INFO:
            self._logger.setLevel(logging.INFO)
        self.server = ModelServer(model_base_path=self.model_base_path, host="127.0.0.1",
                                  port=0, rest_api_port=rest_api_port, **options)
        self.port = self.server.start()
        self.rest_port = self.server.rest_port

    def _start_subprocess(self, args, cpus, rest_api_port, timeout):
        cmd = [sys.executable, "-m", "recsys_tf.cli", "serve", "--model_base_path",
               self.model_base_path, "--host", "127.0.0.1", "--port", "0", *args]
        if rest_api_port is not None:
            self.rest_port = rest_api_port or free_port()
            cmd += ["--rest_api_port", str(self.rest_port)]
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, cwd=ROOT, preexec_fn=pin)
        listening = threading.Event()

        def read():   # the port from the log, then drained so the pipe never fills
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
                if found and self.port is None:
                    self.port = int(found.group(1))
                    listening.set()
            listening.set()

        threading.Thread(target=read, daemon=True, name=f"server-log-{self.proc.pid}").start()
        if not listening.wait(timeout) or self.port is None:
            raise RuntimeError(f"`python {' '.join(cmd[1:])}` did not listen within {timeout:g} s "
                               f"(exit code {self.proc.poll()}); its log:\n{self.log_tail()}")

    # -- state
    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return os.getpid() if self.in_process else self.proc.pid

    def alive(self) -> bool:
        return self.server is not None if self.in_process else (
            self.proc is not None and self.proc.poll() is None)

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(list(self.lines)[-n:])

    def wait_for_log(self, pattern: str, count: int = 1, timeout: float = 600.0) -> bool:
        """Wait until ``count`` log lines match ``pattern``; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(1 for line in list(self.lines) if re.search(pattern, line)) >= count:
                return True
            time.sleep(0.25)
        return False

    # -- stopping
    def stop(self, grace: float = 20.0) -> None:
        """Stop serving: the subprocess terminated (killed after ``grace`` s) and reaped, or
        the in-process server stopped. Safe to call twice."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=grace)
        if self.server is not None:
            server, self.server = self.server, None
            server.stop(grace=min(grace, 2.0))
            self._logger.removeHandler(self._handler)
        if self in _RUNNING:
            _RUNNING.remove(self)

    def __enter__(self) -> "BundledServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(model_base_path: str, models: Optional[Sequence[str]] = None,
                 in_process: bool = False, args: Sequence[str] = (), cpus=None,
                 rest_api_port: Optional[int] = None, timeout: float = 300.0,
                 **server_options) -> BundledServer:
    """Start the bundled server on 127.0.0.1 and wait until it serves.

    Args:
      model_base_path: a root of ``<name>/<version>/`` SavedModel folders.
      models: the names to wait for (default: every model folder under the root).
      in_process: ``ModelServer`` in this process (``server_options`` are its keyword
        arguments) instead of a ``recsys-tf serve`` subprocess (default).
      args: extra ``recsys-tf serve`` flags for the subprocess, e.g.
        ``("--enable_batching", "--batching_parameters_file", path)``.
      cpus: CPUs the subprocess runs on (``os.sched_setaffinity``; default: all).
      rest_api_port: serve the REST API too (0: a free port); ``server.rest_port`` says which.
      timeout: seconds to wait for the port and for every model to be ``AVAILABLE``.

    Returns a started ``BundledServer`` (a context manager that stops it). Raises
    ``RuntimeError`` with the server's last log lines when it does not come up in time.
    """
    return BundledServer(model_base_path, models, in_process=in_process, args=args, cpus=cpus,
                         rest_api_port=rest_api_port, timeout=timeout, **server_options)


def stop_servers(*servers: Optional[BundledServer]) -> None:
    """Stop every server given (None skipped), each even when stopping another failed."""
    errors = []
    for server in servers:
        if server is None:
            continue
        try:
            server.stop()
        except Exception as exc:  # noqa: BLE001 - the others must still stop
            errors.append(exc)
    if errors:
        raise errors[0]


@atexit.register
def _stop_running() -> None:
    stop_servers(*list(_RUNNING))
