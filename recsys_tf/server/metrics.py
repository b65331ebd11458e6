"""Request metrics in Prometheus' text format, named as TF Serving names them.

TF Serving exports its monitoring metrics with ``/`` turned into ``:``; this module keeps:

* ``:tensorflow:serving:request_count{model_name, status}`` -- a counter per model and status
  code name (``OK``, ``INVALID_ARGUMENT``, ...);
* ``:tensorflow:serving:request_latency{model_name, API, entrypoint}`` -- a histogram of request
  latency in microseconds with TF Serving's buckets (exponential: 10 us x 1.8^i, 33 bounds);
* ``:tensorflow:cc:saved_model:load_attempt_count{model_path, status}`` -- SavedModel loads;
* with batching, ``:tensorflow:serving:batching_session:processed_batch_size`` (rows per
  batch, padding included) and ``...:tasks_per_batch`` (requests per batch), as summaries.

Requests naming a model the server does not serve are counted under ``model_name=""`` so a
client cannot grow the label set without bound.
"""
from __future__ import annotations

import threading
from typing import Dict, List, Tuple

_BUCKETS: List[float] = [10.0 * 1.8 ** i for i in range(33)]


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names, values) -> str:
    return ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values))


def _num(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class _Histogram:
    __slots__ = ("counts", "total", "n")

    def __init__(self):
        self.counts = [0] * (len(_BUCKETS) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        lo, hi = 0, len(_BUCKETS)
        while lo < hi:  # first bucket whose bound is >= value
            mid = (lo + hi) // 2
            if _BUCKETS[mid] < value:
                lo = mid + 1
            else:
                hi = mid
        self.counts[lo] += 1
        self.total += value
        self.n += 1


class Metrics:
    """Thread-safe counters and histograms; ``render()`` gives the exposition text."""

    REQUEST_COUNT = ":tensorflow:serving:request_count"
    REQUEST_LATENCY = ":tensorflow:serving:request_latency"
    LOAD_COUNT = ":tensorflow:cc:saved_model:load_attempt_count"
    BATCH_SIZE = ":tensorflow:serving:batching_session:processed_batch_size"
    BATCH_TASKS = ":tensorflow:serving:batching_session:tasks_per_batch"

    def __init__(self):
        self._lock = threading.Lock()
        self._requests: Dict[Tuple[str, str], int] = {}
        self._latency: Dict[Tuple[str, str, str], _Histogram] = {}
        self._loads: Dict[Tuple[str, str], int] = {}
        self._batches = [0, 0, 0]  # batches run, requests in them, rows (padded) in them

    def record_request(self, model: str, api: str, entrypoint: str, status: str,
                       micros: float) -> None:
        with self._lock:
            key = (model, status)
            self._requests[key] = self._requests.get(key, 0) + 1
            hist = self._latency.get((model, api, entrypoint))
            if hist is None:
                hist = self._latency[(model, api, entrypoint)] = _Histogram()
            hist.observe(micros)

    def record_load(self, path: str, status: str) -> None:
        with self._lock:
            key = (path, status)
            self._loads[key] = self._loads.get(key, 0) + 1

    def record_batch(self, tasks: int, rows: int, padded_rows: int) -> None:
        with self._lock:
            self._batches[0] += 1
            self._batches[1] += tasks
            self._batches[2] += padded_rows

    def batch_totals(self) -> Tuple[int, int, int]:
        """(batches, requests, padded rows) run by the batch scheduler so far."""
        with self._lock:
            return tuple(self._batches)

    def request_count(self, model: str, status: str = "OK") -> int:
        with self._lock:
            return self._requests.get((model, status), 0)

    def render(self) -> str:
        with self._lock:
            requests = dict(self._requests)
            latency = {k: (list(h.counts), h.total, h.n) for k, h in self._latency.items()}
            loads = dict(self._loads)
            batches, tasks, rows = self._batches
        out = [f"# TYPE {self.REQUEST_COUNT} counter"]
        for (model, status), n in sorted(requests.items()):
            labels = _labels(("model_name", "status"), (model, status))
            out.append(f"{self.REQUEST_COUNT}{{{labels}}} {n}")
        out.append(f"# TYPE {self.REQUEST_LATENCY} histogram")
        for key, (counts, total, n) in sorted(latency.items()):
            base = _labels(("model_name", "API", "entrypoint"), key)
            cumulative = 0
            for bound, count in zip(_BUCKETS, counts):
                cumulative += count
                out.append(f'{self.REQUEST_LATENCY}_bucket{{{base},le="{_num(bound)}"}} '
                           f"{cumulative}")
            out.append(f'{self.REQUEST_LATENCY}_bucket{{{base},le="+Inf"}} {n}')
            out.append(f"{self.REQUEST_LATENCY}_sum{{{base}}} {_num(total)}")
            out.append(f"{self.REQUEST_LATENCY}_count{{{base}}} {n}")
        out.append(f"# TYPE {self.LOAD_COUNT} counter")
        for (path, status), n in sorted(loads.items()):
            out.append(f"{self.LOAD_COUNT}{{{_labels(('model_path', 'status'), (path, status))}}}"
                       f" {n}")
        if batches:
            out.append(f"# TYPE {self.BATCH_SIZE} summary")
            out.append(f"{self.BATCH_SIZE}_sum {rows}")
            out.append(f"{self.BATCH_SIZE}_count {batches}")
            out.append(f"# TYPE {self.BATCH_TASKS} summary")
            out.append(f"{self.BATCH_TASKS}_sum {tasks}")
            out.append(f"{self.BATCH_TASKS}_count {batches}")
        return "\n".join(out) + "\n"
