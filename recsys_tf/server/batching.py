"""Server-side dynamic batching with TF Serving's ``BatchingParameters``.

Like TF Serving's batching session (a ``SharedBatchScheduler`` behind every servable), requests
for the same model version, signature and outputs wait in a queue of batches; a pool of
``num_batch_threads`` threads runs one batch at a time, concatenating the requests' inputs
along the first (batch) dimension, running the signature once and handing each request its
rows of every output.

* ``max_batch_size``: the most rows in one batch. A request with more rows is refused with
  INVALID_ARGUMENT ("Task size ... is larger than maximum input batch size ..."), as in TF
  Serving. (``BatchingOptions(enable_large_batch_splitting=True,
  max_execution_batch_size=N)`` -- Python only -- instead cuts it into pieces of at most N
  rows.)
* ``batch_timeout_micros``: how long a batch that is not full may wait for more requests once
  a thread is free (0: run what is there as soon as a thread is free -- batches then form
  only while every thread is busy).
* ``max_enqueued_batches``: batches a queue may hold; a request that would need one more is
  refused with UNAVAILABLE ("The batch scheduling queue to which this task was submitted is
  full"), as TF Serving does. The client may retry it.
* ``num_batch_threads``: threads running batches (default: the CPU count).
* ``allowed_batch_sizes``: batches are padded (repeating the first row) up to the next
  allowed size; the last entry must equal ``max_batch_size`` (``max_execution_batch_size``
  when splitting).
* ``pad_variable_length_inputs``: requests whose inputs differ in non-batch dimensions share
  a batch, padded with each tensor's first element; otherwise such requests queue apart.

Two deliberate differences from TF Serving: a request with an input without a batch
dimension (a scalar such as a retrieval model's ``k``), or whose inputs differ in their first
dimension (a ranker's ``one_user`` signature), runs unbatched instead of being refused; and
when a batch fails its requests are retried one by one, so one malformed request cannot fail
the well-formed requests it was batched with.
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import grpc
import numpy as np

from recsys_tf.wire.errors import ServingError

log = logging.getLogger(__name__)

Arrays = Dict[str, np.ndarray]


def _concat(parts: list) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _repeat_first(array: np.ndarray, n: int) -> np.ndarray:
    return np.repeat(array[:1], n, axis=0)


def _inner_shape(array) -> tuple:
    return tuple(int(d) for d in array.shape[1:])


@dataclass
class BatchingOptions:
    """TF Serving's ``BatchingParameters`` with its defaults."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: Tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: Optional[int] = None
    thread_pool_name: str = "model_server_batch_threads"

    @classmethod
    def from_proto(cls, proto) -> "BatchingOptions":
        """From a ``BatchingParameters`` message (``recsys_tf.wire.protos``)."""
        options = cls()
        for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                     "num_batch_threads"):
            if proto.HasField(name):
                setattr(options, name, int(getattr(proto, name).value))
        if proto.HasField("thread_pool_name"):
            options.thread_pool_name = proto.thread_pool_name.value
        options.allowed_batch_sizes = tuple(int(v) for v in proto.allowed_batch_sizes)
        options.pad_variable_length_inputs = bool(proto.pad_variable_length_inputs)
        options.validate()
        return options

    @property
    def execution_size(self) -> int:
        if self.enable_large_batch_splitting and self.max_execution_batch_size:
            return int(self.max_execution_batch_size)
        return int(self.max_batch_size)

    def validate(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be positive")
        if self.num_batch_threads < 1:
            raise ValueError("num_batch_threads must be positive")
        if self.max_enqueued_batches < 1:
            raise ValueError("max_enqueued_batches must be positive")
        if self.batch_timeout_micros < 0:
            raise ValueError("batch_timeout_micros must be non-negative")
        if self.max_execution_batch_size is not None and self.max_execution_batch_size < 1:
            raise ValueError("max_execution_batch_size must be positive")
        sizes = list(self.allowed_batch_sizes)
        if sizes:
            if any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] < 1:
                raise ValueError("allowed_batch_sizes entries must be monotonically increasing")
            if sizes[-1] != self.execution_size:
                which = ("max_execution_batch_size" if self.enable_large_batch_splitting
                         else "max_batch_size")
                raise ValueError(f"final entry in allowed_batch_sizes must equal {which} "
                                 f"({self.execution_size}), got {sizes[-1]}")


class _Task:
    __slots__ = ("payload", "size", "_pending", "result", "error")

    def __init__(self, payload, size: int):
        self.payload = payload
        self.size = size
        # held until the task is done: a bare lock, less machinery than an Event
        self._pending = threading.Lock()
        self._pending.acquire()
        self.result = None
        self.error: Optional[BaseException] = None

    def wait(self) -> None:
        """Block until ``set_done``; one waiter, once."""
        self._pending.acquire()

    def set_done(self) -> None:
        """Called once per task, by whichever thread finishes (or cancels) it."""
        self._pending.release()


class _Batch:
    __slots__ = ("tasks", "size", "created", "closed")

    def __init__(self, now: float):
        self.tasks: List[_Task] = []
        self.size = 0
        self.created = now
        self.closed = False


class _Queue:
    __slots__ = ("key", "executor", "batches")

    def __init__(self, key, executor):
        self.key = key
        self.executor = executor
        self.batches: collections.deque = collections.deque()


class BatchExecutor:
    """How a queue's tasks run. ``execute`` runs several tasks as one batch padded to
    ``target`` rows and returns each task's result; ``execute_one`` runs one task alone."""

    def execute(self, payloads: list, sizes: List[int], target: int) -> list:
        raise NotImplementedError

    def execute_one(self, payload):
        raise NotImplementedError


class ArrayExecutor(BatchExecutor):
    """Tasks are ``{input: array}`` dicts of numpy arrays sharing a first
    dimension; ``run`` maps such a dict to ``{output: array}`` with the same first dimension."""

    def __init__(self, run: Callable[[Arrays], Arrays], pad_inner: bool = False):
        self.run = run
        self.pad_inner = pad_inner

    def execute_one(self, payload):
        return self.run(payload)

    def execute(self, payloads, sizes, target):
        total = sum(sizes)
        merged = {}
        for name in payloads[0]:
            parts = [p[name] for p in payloads]
            if self.pad_inner:
                parts = _pad_inner(parts)
            array = _concat(parts)
            if target > total:
                array = _concat([array, _repeat_first(array, target - total)])
            merged[name] = array
        return split_outputs(self.run(merged), sizes, target)


def split_outputs(outputs: Arrays, sizes: List[int], rows: int) -> List[Arrays]:
    """Each request's rows of every output of a batch run over ``rows`` rows (the requests'
    ``sizes`` in order, then any padding); ValueError when an output has no such batch
    dimension (the caller then runs the requests one by one)."""
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != rows:
            raise ValueError(f"output {name!r} has no batch dimension of size {rows}; "
                             "running the requests one by one")
    results, start = [], 0
    for size in sizes:
        results.append({name: value[start:start + size] for name, value in outputs.items()})
        start += size
    return results


def batch_size_of(inputs: Arrays) -> Optional[int]:
    """The shared first dimension of all inputs, or None when they have none in common."""
    size = None
    for array in inputs.values():
        if array.ndim == 0:
            return None
        if size is None:
            size = int(array.shape[0])
        elif int(array.shape[0]) != size:
            return None
    return size


class BatchScheduler:
    """A shared pool of batch threads over one queue per (servable, signature, outputs)."""

    def __init__(self, options: BatchingOptions,
                 on_batch: Optional[Callable[[int, int, int], None]] = None):
        options.validate()
        self.options = options
        self._on_batch = on_batch  # called with (tasks, rows, padded rows) per batch run
        self._cv = threading.Condition()
        self._queues: "collections.OrderedDict[tuple, _Queue]" = collections.OrderedDict()
        self._stopped = False
        self._threads = [threading.Thread(target=self._work, daemon=True,
                                          name=f"{options.thread_pool_name}-{i}")
                         for i in range(options.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    # ----------------------------------------------------------------- submitting
    def _check_size(self, size: int) -> None:
        if size > self.options.max_batch_size:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Task size {size} is larger than maximum input batch size "
                               f"{self.options.max_batch_size}")

    def run(self, key: tuple, run: Callable[[Arrays], Arrays], inputs: Arrays) -> Arrays:
        """Run ``run(inputs)`` as part of a batch; blocks; returns this request's outputs.

        ``key`` identifies what may be batched together (servable, signature, outputs);
        inputs whose non-batch dimensions differ are kept apart unless padding is on.
        """
        size = batch_size_of(inputs)
        if size is None:
            return run(inputs)  # no common batch dimension: nothing to batch
        opts = self.options
        self._check_size(size)
        if size == 0:
            return run(inputs)
        shape_key = tuple(sorted(
            (name, str(array.dtype),
             array.ndim if opts.pad_variable_length_inputs else _inner_shape(array))
            for name, array in inputs.items()))
        full_key = (key, shape_key)
        executor = ArrayExecutor(run, opts.pad_variable_length_inputs)
        step = opts.execution_size
        if size <= step:
            task = _Task(inputs, size)
            self._enqueue(full_key, executor, [task])
            return self._wait(task)
        pieces = [_Task({n: a[i:i + step] for n, a in inputs.items()}, min(step, size - i))
                  for i in range(0, size, step)]
        self._enqueue(full_key, executor, pieces)
        parts = [self._wait(piece) for piece in pieces]
        return {name: _concat([p[name] for p in parts]) for name in parts[0]}

    @staticmethod
    def _wait(task: _Task):
        task.wait()
        if task.error is not None:
            raise task.error
        return task.result

    def _enqueue(self, key, executor, tasks: List[_Task]) -> None:
        limit = self.options.execution_size
        with self._cv:
            if self._stopped:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(key, executor)
            # all pieces or none: check the room first
            needed, open_room = 0, 0
            last = queue.batches[-1] if queue.batches else None
            if last is not None and not last.closed:
                open_room = limit - last.size
            room_left = open_room
            for task in tasks:
                if task.size <= room_left:
                    room_left -= task.size
                else:
                    needed += 1
                    room_left = limit - task.size
            if len(queue.batches) + needed > self.options.max_enqueued_batches:
                raise ServingError(grpc.StatusCode.UNAVAILABLE,
                                   "The batch scheduling queue to which this task was "
                                   "submitted is full")
            now = time.monotonic()
            wake = False  # only a new or a closed batch changes what the batch threads wait for
            for task in tasks:
                last = queue.batches[-1] if queue.batches else None
                if last is None or last.closed or last.size + task.size > limit:
                    if last is not None:
                        last.closed = True
                    last = _Batch(now)
                    queue.batches.append(last)
                    wake = True
                last.tasks.append(task)
                last.size += task.size
                if last.size >= limit:
                    last.closed = wake = True
            if wake:
                self._cv.notify()

    # ----------------------------------------------------------------- the batch threads
    def _ready(self, now: float) -> Tuple[Optional[_Queue], Optional[_Batch], Optional[float]]:
        timeout = self.options.batch_timeout_micros / 1e6
        earliest = None
        for key in list(self._queues):
            queue = self._queues[key]
            if not queue.batches:
                del self._queues[key]  # idle queues go; they are cheap to make again
                continue
            head = queue.batches[0]
            due = head.created + timeout
            if head.closed or now >= due:
                queue.batches.popleft()
                self._queues.move_to_end(key)  # round robin across queues
                return queue, head, None
            earliest = due if earliest is None else min(earliest, due)
        return None, None, earliest

    def _work(self) -> None:
        while True:
            with self._cv:
                while True:
                    if self._stopped:
                        return
                    queue, batch, due = self._ready(time.monotonic())
                    if batch is not None:
                        # another batch may be ready too (one enqueue can close several):
                        # let an idle thread look
                        self._cv.notify()
                        break
                    self._cv.wait(None if due is None else max(0.0, due - time.monotonic()))
            self._execute(queue.executor, batch.tasks)

    def _target(self, total: int) -> int:
        for allowed in self.options.allowed_batch_sizes:
            if allowed >= total:
                return allowed
        return total

    def _execute(self, executor: BatchExecutor, tasks: List[_Task]) -> None:
        try:
            if len(tasks) == 1 and not self.options.allowed_batch_sizes:
                if self._on_batch is not None:
                    self._on_batch(1, tasks[0].size, tasks[0].size)
                tasks[0].result = executor.execute_one(tasks[0].payload)
            else:
                sizes = [t.size for t in tasks]
                target = self._target(sum(sizes))
                if self._on_batch is not None:
                    self._on_batch(len(tasks), sum(sizes), target)
                results = executor.execute([t.payload for t in tasks], sizes, target)
                for task, result in zip(tasks, results):
                    task.result = result
        except BaseException as exc:  # one task: its error; several: retry them one by one
            if len(tasks) == 1:
                tasks[0].error = exc
            else:
                for task in tasks:
                    try:
                        task.result = executor.execute_one(task.payload)
                        task.error = None
                    except BaseException as single:
                        task.error = single
        finally:
            for task in tasks:
                task.set_done()

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            pending = [t for q in self._queues.values() for b in q.batches for t in b.tasks]
            self._queues.clear()
            self._cv.notify_all()
        for task in pending:
            task.error = ServingError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            task.set_done()
        for thread in self._threads:
            thread.join(timeout=5)


def _pad_inner(parts: list) -> list:
    """Pad non-batch dimensions to the largest in the batch with each tensor's first element."""
    if len({_inner_shape(p) for p in parts}) <= 1:
        return parts
    target = tuple(max(p.shape[d] for p in parts) for d in range(1, parts[0].ndim))
    out = []
    for p in parts:
        if p.shape[1:] == target:
            out.append(p)
            continue
        fill = p.reshape(-1)[0] if p.size else (b"" if p.dtype == object else 0)
        padded = np.full((p.shape[0],) + target, fill, dtype=p.dtype)
        padded[tuple(slice(0, s) for s in p.shape)] = p
        out.append(padded)
    return out
