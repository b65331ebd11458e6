"""Criteo display advertising (Kaggle 2014 format): a label, 13 integer and 26 categorical fields.

File format
-----------
``train.txt`` as released for the Kaggle challenge: one impression per line, tab separated, no
header, 40 fields - ``label`` (0/1), ``I1``..``I13`` (integer counts, may be negative),
``C1``..``C26`` (categories hashed to 8 hex digits). Any field but the label may be empty
(missing). The file is read from ``<data_dir>/criteo/train.txt`` or from ``path=`` (for example
the shared 900-row sample ``criteo-samples/kaggle_train_sample900.txt``).

Protocol (as in BARS / FuxiCTR's Criteo sets)
---------------------------------------------
* **Split in file order**: the first 80% of the (good) rows are ``train``, the next 10%
  ``valid``, the last 10% ``test`` (``n_train = floor(0.8 n)``, ``n_valid = floor(0.9 n) -
  n_train``). No shuffling: the file is in time order.
* **Integer fields**, ``integers=`` option:

  - ``"log"`` (default): kept as raw numbers (NaN when empty) and declared
    ``Numeric(log=True, missing=..., fill_value=0)``, so the model computes
    ``(log1p(max(x, 0)) - mean) / std`` with ``mean``/``std`` from train; an exported model
    takes the raw counts, NaN for a missing one. ``missing=`` (default ``"indicator"``): a
    missing count is read as 0 events before the log and gets a learned missing term
    (``"fill"``: 0 alone; ``"mean"``: the training mean, no indicator - what this loader did
    before; chosen on the criteo-family tuning sets, benchmarks/README.md).
  - ``"bucket"``: the BARS discretisation ``b(x) = floor(ln(x)^2)`` for ``x > 2``, ``x``
    itself otherwise, written as a string (``""`` when empty) and declared categorical with
    the same count threshold as the C fields. Serving then takes the bucket strings:
    apply :func:`bucketise` to raw counts before calling the model.

* **Rare categories**: a value of a categorical field enters the field's vocabulary only if
  it occurs at least ``min_count`` times in ``train`` (default 10, BARS' ``min_categr_count``);
  every other value - rare, unseen, or new at serving time - falls into the OOV bucket inside
  the model, never an error. Vocabularies are ordered by count (descending), then value. A
  field with no value over the threshold keeps its most frequent value (a vocabulary cannot be
  empty). The empty string (missing) is an ordinary value.

Bad input
---------
A line is bad when it does not have exactly 40 tab-separated fields or its label is not ``0``
or ``1``. With ``on_bad_lines="error"`` (default) loading stops with a ``ValueError`` naming the
file, the 1-based line number and the field count found; with ``"skip"`` bad lines are left
out (before splitting) and counted in ``info["bad_lines"]`` (the first line numbers are in
``info["bad_line_numbers"]``). An integer field that is not a number is read as missing and
counted in ``info["unparsable_integers"]``. Lines may end in ``\\n`` or ``\\r\\n``; the last line
needs no newline.

Two paths, one result
---------------------
* **In memory** (``streaming=False``; what ``"auto"`` picks for files under
  ``stream_above_bytes``, 256 MiB by default): the file is read into pandas DataFrames.
* **Streaming** (``streaming=True``, or ``"auto"`` above the size limit), for files larger
  than memory:

  1. a byte scan (numpy, block by block) counts lines, finds bad lines and keeps a sparse
     line -> byte offset index;
  2. one pass over the train rows in pandas chunks counts categories with bounded memory
     (per-chunk counts spill to hash-partitioned files on disk, each partition is then summed
     on its own, so memory is bounded by a chunk plus one partition) and accumulates the
     integer fields' log statistics;
  3. ``train``/``valid``/``test`` are :class:`CriteoSplit` objects, not DataFrames: they
     know their length, give columns (``split["label"]``) and ``head(n)`` as pandas, and
     :meth:`CriteoSplit.tf_dataset` parses their lines with ``tf.data.TextLineDataset``
     (shuffle buffer of lines, batch, then vectorised ``tf.strings`` parsing on parallel
     calls, prefetch).

  The trainer needs nothing special: :func:`recsys_tf.training.make_dataset` hands a
  ``CriteoSplit`` to its ``tf_dataset`` instead of slicing a DataFrame, so
  ``train_ranker`` / ``evaluate_ranker`` / ``recsys-tf train ... --data criteo`` run on either
  path, and both paths give the same features for the same file (tested).

Terms: the Criteo Labs data terms allow non-commercial research use only and forbid
redistribution; cite Criteo. Never ship the files with the package.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import shutil
import tempfile

import numpy as np
import pandas as pd

from recsys_tf.data import Dataset
from recsys_tf.features import Categorical, FeatureSet, Numeric

__all__ = ["load", "read", "bucketise", "scan", "split_sizes", "feature_set", "CriteoSplit",
           "LABEL", "INT_COLUMNS", "CAT_COLUMNS", "COLUMNS", "N_FIELDS"]

LABEL = "label"
INT_COLUMNS = tuple(f"I{i}" for i in range(1, 14))
CAT_COLUMNS = tuple(f"C{i}" for i in range(1, 27))
COLUMNS = (LABEL,) + INT_COLUMNS + CAT_COLUMNS
N_FIELDS = len(COLUMNS)                         # 40
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
INTEGER_MODES = ("log", "bucket")
MISSING_MODES = ("mean", "fill", "indicator")
MISSING = "indicator"     # the default treatment of a missing integer (integers="log")
FILL_VALUE = 0.0          # a missing count reads as 0 events (missing="fill"/"indicator")
MIN_COUNT = 10
STREAM_ABOVE_BYTES = 256 << 20
# Numbers as pandas and tf.strings both accept them; anything else in an I field is missing.
NUMBER_RE = r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?"
_BLOCK = 64 << 20
_OFFSET_EVERY = 1 << 16                         # sparse line -> byte offset index
_MAX_BAD_REPORTED = 100


# -- the integer transforms ------------------------------------------------------------------
def bucketise(x) -> np.ndarray:
    """BARS discretisation of integer counts: ``str(floor(ln(x)^2))`` for ``x > 2``,
    ``str(int(x))`` otherwise, ``""`` when missing (NaN). Returns an object array of strings."""
    x = np.asarray(x, dtype=np.float64)
    out = np.full(x.shape, "", dtype=object)
    ok = np.isfinite(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        b = np.where(x > 2, np.floor(np.log(np.where(x > 2, x, 3.0)) ** 2), np.trunc(x))
    out[ok] = [str(int(v)) for v in b[ok]]
    return out


def _log_stats(x: np.ndarray, missing: str = "mean"):
    """(count, sum, sum of squares) of ``log1p(max(x, 0))`` over the non-missing values
    (``missing="mean"``), or over all values with a missing one read as 0 (``"fill"``,
    ``"indicator"``: what the model then sees, see ``Numeric(missing=...)``)."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)] if missing == "mean" else np.where(np.isfinite(x), x, FILL_VALUE)
    z = np.log1p(np.maximum(x, 0.0))
    return np.array([z.size, z.sum(), np.square(z).sum()], dtype=np.float64)


# -- scanning lines ---------------------------------------------------------------------------
@dataclasses.dataclass
class ScanResult:
    """What a byte scan found: line count, bad lines and a sparse line -> byte offset index."""

    path: str
    n_lines: int
    bad_lines: np.ndarray               # 0-based indices of bad lines, sorted
    bad_examples: list                  # [(1-based line number, fields found, reason)], first few
    offsets: np.ndarray                 # byte offset of line k * _OFFSET_EVERY
    n_bytes: int

    @property
    def n_rows(self) -> int:
        return self.n_lines - len(self.bad_lines)

    def line_of_row(self, row: int) -> int:
        """0-based line index of the ``row``-th good row; ``n_lines`` for ``row >= n_rows``."""
        if row >= self.n_rows:
            return self.n_lines
        lo, hi = int(row), int(row) + len(self.bad_lines)
        while lo < hi:       # smallest line with row + 1 good lines at or before it
            mid = (lo + hi) // 2
            good = mid + 1 - int(np.searchsorted(self.bad_lines, mid, side="right"))
            if good >= row + 1:
                hi = mid
            else:
                lo = mid + 1
        return lo


def _bad_error(path, line_no, fields, reason):
    return ValueError(
        f"{path}: line {line_no}: {reason} (found {fields} field{'s' if fields != 1 else ''}; a "
        f"Criteo line has {N_FIELDS} tab-separated fields: label (0/1), I1-I13, C1-C26). Fix the "
        "file, or load with on_bad_lines='skip' to leave such lines out and count them.")


def _scan_block(buf: np.ndarray, ends: np.ndarray, starts: np.ndarray):
    """Field counts and label validity of the lines ``buf[starts[i]:ends[i]]``."""
    tabs = np.flatnonzero(buf == 9)
    n_tabs = np.searchsorted(tabs, ends) - np.searchsorted(tabs, starts)
    fields = n_tabs + 1
    first_tab = np.searchsorted(tabs, starts)
    first_tab_pos = np.where(first_tab < tabs.size, tabs[np.minimum(first_tab, tabs.size - 1)], -1)
    lab = buf[np.minimum(starts, buf.size - 1)] if buf.size else np.zeros(0, np.uint8)
    label_ok = (first_tab_pos == starts + 1) & ((lab == ord("0")) | (lab == ord("1")))
    return fields, label_ok


def scan(path: str, on_bad_lines: str = "error", data: bytes | None = None) -> ScanResult:
    """Counts lines and finds bad ones (wrong field count, label not 0/1) block by block.

    With ``on_bad_lines="error"`` the first bad line raises a ``ValueError`` naming it.
    ``data`` (the file's bytes) avoids reading the file again when the caller has it."""
    _check_on_bad_lines(on_bad_lines)
    bad, examples, offsets = [], [], [0]
    n_lines, pos, carry = 0, 0, b""

    def blocks():
        if data is not None:
            yield data
            return
        with open(path, "rb") as f:
            while True:
                chunk = f.read(_BLOCK)
                if not chunk:
                    return
                yield chunk

    def process(block: bytes, base: int, final: bool):
        nonlocal n_lines
        buf = np.frombuffer(block, dtype=np.uint8)
        nl = np.flatnonzero(buf == 10)
        ends = nl.copy()
        if final and buf.size and (nl.size == 0 or nl[-1] != buf.size - 1):
            ends = np.append(ends, buf.size)             # last line without a newline
        starts = np.concatenate([[0], nl + 1])[: ends.size]
        # a trailing \r belongs to the line ending
        cr = (ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13) if buf.size else ends > starts
        ends = ends - cr.astype(ends.dtype)
        fields, label_ok = _scan_block(buf, ends, starts)
        ok = (fields == N_FIELDS) & label_ok
        idx = np.flatnonzero(~ok)
        for i in idx:
            line_no = n_lines + int(i) + 1
            reason = (f"expected {N_FIELDS} fields" if fields[i] != N_FIELDS
                      else "the label (first field) must be 0 or 1")
            if on_bad_lines == "error":
                raise _bad_error(path, line_no, int(fields[i]), reason)
            if len(examples) < _MAX_BAD_REPORTED:
                examples.append((line_no, int(fields[i]), reason))
        bad.append(idx + n_lines)
        # byte offsets of every _OFFSET_EVERY-th line start
        line_ids = np.arange(n_lines, n_lines + starts.size)
        keep = (line_ids % _OFFSET_EVERY == 0) & (line_ids > 0)
        offsets.extend((starts[keep] + base).tolist())
        n_lines += int(starts.size)
        return int(nl[-1]) + 1 if nl.size else 0

    for block in blocks():
        buf = carry + block
        used = process(buf, pos, final=False)      # the lines that end in a newline
        carry = buf[used:]
        pos += used
    total = pos + len(carry)
    if carry:
        process(carry, pos, final=True)
    bad_lines = np.concatenate(bad).astype(np.int64) if bad else np.zeros(0, np.int64)
    return ScanResult(path=path, n_lines=n_lines, bad_lines=bad_lines,
                      bad_examples=examples, offsets=np.asarray(offsets, dtype=np.int64),
                      n_bytes=total)


def _check_on_bad_lines(on_bad_lines):
    if on_bad_lines not in ("error", "skip"):
        raise ValueError(f"on_bad_lines={on_bad_lines!r}, expected 'error' or 'skip'")


def split_sizes(n: int, fractions=SPLIT_FRACTIONS) -> tuple[int, int, int]:
    """``(n_train, n_valid, n_test)`` of ``n`` rows in file order: 80% / 10% / 10%."""
    a = int(math.floor(fractions[0] * n + 1e-9))
    b = int(math.floor((fractions[0] + fractions[1]) * n + 1e-9))
    return a, b - a, n - b


# -- parsing with pandas ---------------------------------------------------------------------
def _read_csv(source, nrows=None, skiprows=None, chunksize=None, usecols=None):
    return pd.read_csv(
        source, sep="\t", header=None, names=list(COLUMNS), usecols=usecols, dtype=str,
        keep_default_na=False, na_filter=False, quoting=csv.QUOTE_NONE, skip_blank_lines=False,
        nrows=nrows, skiprows=skiprows, chunksize=chunksize, engine="c", lineterminator="\n")


def _numbers(s: pd.Series):
    """Strings -> float64: ``""`` and anything that is not a finite number -> NaN (what
    ``pd.to_numeric`` parses; a column with any other text falls back to ``NUMBER_RE``, the
    rule of the tf.data path). Returns ``(values, non-empty values that were not numbers)``."""
    v = s.to_numpy(dtype=object)
    empty = v == ""
    try:   # the common case, in C: every non-empty value parses
        x = pd.to_numeric(pd.Series(np.where(empty, None, v)), errors="raise").to_numpy(
            np.float64, na_value=np.nan)
        strange = ~empty & ~np.isfinite(x)           # "nan", "inf" written out
        if strange.any():
            x[strange] = np.nan
        return x, int(strange.sum())
    except (ValueError, TypeError):
        pass
    good = s.str.fullmatch(NUMBER_RE).to_numpy(dtype=bool)   # slow path: per value
    x = np.full(len(v), np.nan)
    x[good] = v[good].astype(np.float64)
    return x, int((~good & ~empty).sum())


def _typed(frame: pd.DataFrame, integers: str, counter: dict | None = None) -> pd.DataFrame:
    """String columns -> label int64, I fields float64 (``log``) or bucket strings, C as str."""
    out = {}
    if LABEL in frame:
        out[LABEL] = frame[LABEL].to_numpy().astype(np.int64)
    for c in INT_COLUMNS:
        if c not in frame:
            continue
        x, n_bad = _numbers(frame[c])
        if counter is not None:
            counter["unparsable_integers"] = counter.get("unparsable_integers", 0) + n_bad
        out[c] = bucketise(x) if integers == "bucket" else x
    for c in CAT_COLUMNS:
        if c in frame:
            s = frame[c]
            if c == COLUMNS[-1] and s.str.endswith("\r").any():   # \r\n line endings
                s = s.str.replace("\r$", "", regex=True)
            out[c] = s.to_numpy(dtype=object)
    return pd.DataFrame(out, index=frame.index)


def read(path: str, on_bad_lines: str = "error", integers: str = "log"):
    """The whole file: ``(DataFrame of the good rows in file order, ScanResult, counters)``
    (counters: ``{"unparsable_integers": n}``).

    Columns: ``label`` (int64), ``I1``..``I13`` (float64, NaN when missing; bucket strings
    with ``integers="bucket"``), ``C1``..``C26`` (str, ``""`` when missing)."""
    _check_integers(integers)
    with open(path, "rb") as f:
        data = f.read()
    sc = scan(path, on_bad_lines, data=data)
    counter = {}
    if sc.n_rows == 0:
        frame = pd.DataFrame({c: pd.Series([], dtype=object) for c in COLUMNS})
        return _typed(frame, integers, counter), sc, counter
    frame = _read_csv(io.BytesIO(data), skiprows=sc.bad_lines.tolist() or None)
    frame = frame.iloc[: sc.n_rows]
    if len(frame) != sc.n_rows:
        raise ValueError(f"{path}: parsed {len(frame)} rows, the line scan found {sc.n_rows}")
    return _typed(frame.reset_index(drop=True), integers, counter), sc, counter


def _check_integers(integers, missing=MISSING):
    if integers not in INTEGER_MODES:
        raise ValueError(f"integers={integers!r}, expected one of {INTEGER_MODES}")
    if missing not in MISSING_MODES:
        raise ValueError(f"missing={missing!r}, expected one of {MISSING_MODES}")


# -- vocabularies ---------------------------------------------------------------------------
def _vocab_from_counts(counts: pd.Series, min_count: int) -> tuple:
    """Values with count >= min_count, by count desc then value; the top value if none."""
    if counts.empty:
        return ("",)
    df = pd.DataFrame({"v": counts.index.astype(str), "n": counts.to_numpy()})
    df = df.sort_values(["n", "v"], ascending=[False, True], kind="mergesort")
    keep = df[df["n"] >= min_count]
    if keep.empty:
        keep = df.head(1)
    return tuple(keep["v"].tolist())


def vocabularies(frame: pd.DataFrame, columns, min_count: int) -> dict:
    """Per column: the values seen at least ``min_count`` times in ``frame``."""
    return {c: _vocab_from_counts(frame[c].value_counts(sort=False), min_count) for c in columns}


class _PartitionedCounter:
    """Exact value counts per field with bounded memory.

    Chunk counts are buffered; when the buffer passes ``max_buffer`` entries it is reduced
    and spilled to ``partitions`` files by a hash of the value. :meth:`vocabularies` sums
    one partition at a time, so memory holds one chunk's counts plus one partition."""

    def __init__(self, columns, partitions=1, max_buffer=5_000_000, tmpdir=None):
        self.columns = list(columns)
        self.partitions = max(1, int(partitions))
        self.max_buffer = int(max_buffer)
        self.buffer, self.buffered = [], 0
        self.dir = tempfile.mkdtemp(prefix="criteo_counts_", dir=tmpdir)
        self.spilled = False

    def add(self, frame: pd.DataFrame):
        for i, c in enumerate(self.columns):
            vc = frame[c].value_counts(sort=False)
            self.buffer.append(pd.DataFrame({"f": np.int16(i), "v": vc.index.astype(str),
                                             "n": vc.to_numpy(np.int64)}))
            self.buffered += len(vc)
        if self.buffered > self.max_buffer:
            self._spill()

    def _reduced(self, parts):
        df = pd.concat(parts, ignore_index=True)
        return df.groupby(["f", "v"], sort=False, as_index=False)["n"].sum()

    def _spill(self):
        if not self.buffer:
            return
        df = self._reduced(self.buffer)
        self.buffer, self.buffered = [], 0
        part = (pd.util.hash_pandas_object(df["v"], index=False).to_numpy()
                % np.uint64(self.partitions)).astype(np.int64)
        for p in range(self.partitions):
            sub = df[part == p]
            if len(sub):
                sub.to_csv(os.path.join(self.dir, f"part-{p}.tsv"), sep="\t", header=False,
                           index=False, mode="a", quoting=csv.QUOTE_NONE)
        self.spilled = True

    def vocabularies(self, min_count: int) -> dict:
        kept = {i: [] for i in range(len(self.columns))}
        if self.spilled:
            self._spill()
            for p in range(self.partitions):
                fn = os.path.join(self.dir, f"part-{p}.tsv")
                if not os.path.exists(fn):
                    continue
                df = pd.read_csv(fn, sep="\t", header=None, names=["f", "v", "n"],
                                 dtype={"f": np.int16, "v": str, "n": np.int64},
                                 keep_default_na=False, na_filter=False, quoting=csv.QUOTE_NONE)
                df = df.groupby(["f", "v"], sort=False, as_index=False)["n"].sum()
                for i, g in df.groupby("f", sort=False):
                    kept[int(i)].append(g)
        elif self.buffer:
            df = self._reduced(self.buffer)
            for i, g in df.groupby("f", sort=False):
                kept[int(i)].append(g)
        out = {}
        for i, c in enumerate(self.columns):
            if kept[i]:
                g = pd.concat(kept[i], ignore_index=True)
                counts = pd.Series(g["n"].to_numpy(), index=g["v"].to_numpy())
            else:
                counts = pd.Series([], dtype=np.int64)
            out[c] = _vocab_from_counts(counts, min_count)
        return out

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def count_train(raw_frames, integers, min_count, partitions=1, missing="mean"):
    """The streaming pass over the train rows (raw pandas chunks): ``(vocabularies, integer
    statistics, counters)``, in the memory of one chunk plus one counting partition; the
    integer statistics are taken as ``missing`` says (see :func:`_log_stats`)."""
    cat_cols = CAT_COLUMNS + (INT_COLUMNS if integers == "bucket" else ())
    counts = _PartitionedCounter(cat_cols, partitions=partitions)
    counter, sums = {}, {c: np.zeros(3) for c in INT_COLUMNS}
    try:
        for raw in raw_frames:
            chunk = _typed(raw, integers, counter)
            counts.add(chunk)
            if integers == "log":
                for c in INT_COLUMNS:
                    sums[c] += _log_stats(chunk[c].to_numpy(np.float64), missing)
        vocabs = counts.vocabularies(min_count)
    finally:
        counts.close()
    return vocabs, (_stats_from_sums(sums) if integers == "log" else {}), counter


# -- the FeatureSet ---------------------------------------------------------------------------
def feature_set(vocabs: dict, int_stats: dict | None = None, integers: str = "log",
                dim: int = 16, missing: str = MISSING) -> FeatureSet:
    """The Criteo FeatureSet: I fields Numeric(log=True, missing=missing, fill_value=0) (or
    categorical buckets), C fields categorical with the given vocabularies; all of role
    ``context``; label ``label``.

    ``int_stats``: per I field ``(mean, std)`` of ``log1p(max(x, 0))`` on train (computed with
    the same ``missing``, see :func:`_log_stats`)."""
    _check_integers(integers, missing)
    feats = []
    for c in INT_COLUMNS:
        if integers == "bucket":
            feats.append(Categorical(c, vocabulary=vocabs[c], dim=dim))
        else:
            mean, std = (int_stats or {}).get(c, (0.0, 1.0))
            feats.append(Numeric(c, mean=float(mean), std=float(std) if std > 1e-12 else 1.0,
                                 log=True, missing=missing, fill_value=FILL_VALUE))
    for c in CAT_COLUMNS:
        feats.append(Categorical(c, vocabulary=vocabs[c], dim=dim))
    return FeatureSet(feats, label=LABEL)


def _stats_from_sums(sums: dict) -> dict:
    out = {}
    for c, (n, s, ss) in sums.items():
        if n > 0:
            mean = s / n
            out[c] = (mean, math.sqrt(max(ss / n - mean * mean, 0.0)))
        else:
            out[c] = (0.0, 1.0)
    return out


def _empty_frame(columns) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})


# -- streaming splits --------------------------------------------------------------------------
class CriteoSplit:
    """One split of a Criteo file, read lazily: ``len``, ``split[column]``, ``head(n)`` and
    :meth:`tf_dataset` (``tf.data.TextLineDataset`` parsing).

    It stands in for a DataFrame where the trainer needs one: ``make_dataset`` calls
    :meth:`tf_dataset`, ``evaluate_ranker`` reads ``split["label"]``."""

    def __init__(self, scan_result: ScanResult, first_row: int, n_rows: int, integers: str,
                 name: str = "split"):
        self.scan, self.first_row, self.n_rows = scan_result, int(first_row), int(n_rows)
        self.integers, self.name = integers, name
        self.first_line = scan_result.line_of_row(self.first_row)
        self.end_line = (scan_result.line_of_row(self.first_row + self.n_rows)
                         if self.n_rows else self.first_line)
        bl = scan_result.bad_lines
        self.bad_lines = bl[(bl >= self.first_line) & (bl < self.end_line)]
        self.columns = pd.Index(COLUMNS)

    def __len__(self):
        return self.n_rows

    def __repr__(self):
        return (f"CriteoSplit({self.name}: {self.n_rows} rows, lines {self.first_line + 1}-"
                f"{self.end_line} of {self.scan.path})")

    def __contains__(self, column):
        return column in COLUMNS

    # -- pandas access ------------------------------------------------------------------
    def _open_at_first_line(self):
        f = open(self.scan.path, "rb")
        k = self.first_line // _OFFSET_EVERY
        f.seek(int(self.scan.offsets[k]) if k < len(self.scan.offsets) else 0)
        for _ in range(self.first_line - k * _OFFSET_EVERY if k < len(self.scan.offsets)
                       else self.first_line):
            f.readline()
        return f

    def iter_frames(self, chunksize=200_000, usecols=None, nrows=None, raw=False):
        """DataFrames of ``chunksize`` rows in file order (typed unless ``raw``)."""
        n = self.n_rows if nrows is None else min(int(nrows), self.n_rows)
        if n == 0:
            return
        skip = (self.bad_lines - self.first_line).tolist() or None
        with self._open_at_first_line() as f:
            reader = _read_csv(f, nrows=n, skiprows=skip, chunksize=chunksize, usecols=usecols)
            for chunk in reader:
                yield chunk if raw else _typed(chunk, self.integers)

    def to_frame(self, usecols=None) -> pd.DataFrame:
        parts = list(self.iter_frames(usecols=usecols))
        cols = list(usecols) if usecols is not None else list(COLUMNS)
        return (pd.concat(parts, ignore_index=True) if parts
                else _typed(_empty_frame(cols), self.integers))

    def head(self, n=5) -> pd.DataFrame:
        parts = list(self.iter_frames(chunksize=max(int(n), 1), nrows=n))
        return pd.concat(parts, ignore_index=True) if parts else self.to_frame()

    def __getitem__(self, column):
        if column not in COLUMNS:
            raise KeyError(f"{self!r} has no column {column!r}; columns are {list(COLUMNS)}")
        return self.to_frame(usecols=[column])[column]

    # -- tf.data --------------------------------------------------------------------------
    def tf_dataset(self, features=None, batch_size=256, label=True, shuffle=False, seed=0,
                   shuffle_buffer=100_000, input_context=None):
        """Batches of ``(features dict[, label])`` parsed from the file with tf.data.

        Lines are read by ``TextLineDataset`` (skipping to this split), bad lines dropped by
        their line number, optionally shuffled with a buffer of ``shuffle_buffer`` lines,
        batched, then split and converted with vectorised ``tf.strings`` ops.
        ``input_context`` (a ``tf.distribute.InputContext``): this input pipeline reads every
        ``num_input_pipelines``-th line from its ``input_pipeline_id`` on (its own share)."""
        lines = self.lines()
        n = self.n_rows
        if input_context is not None and input_context.num_input_pipelines > 1:
            k, i = input_context.num_input_pipelines, input_context.input_pipeline_id
            lines, n = lines.shard(k, i), len(range(i, self.n_rows, k))
        return _batched(lines, n, features, self.integers, batch_size, label, shuffle, seed,
                        shuffle_buffer)

    def lines(self):
        """The split's good lines, in file order (a ``tf.data`` dataset of strings)."""
        from recsys_tf.backend import tf

        lines = tf.data.TextLineDataset(self.scan.path).skip(self.first_line).take(
            self.end_line - self.first_line)
        if len(self.bad_lines):
            bad = tf.constant(self.bad_lines - self.first_line, tf.int64)   # sorted

            last = len(self.bad_lines) - 1

            def good(i, _):     # not one of the bad lines (binary search)
                j = tf.minimum(tf.searchsorted(bad, tf.reshape(i, [1]))[0], last)
                return tf.not_equal(bad[j], i)

            lines = lines.enumerate().filter(good).map(lambda i, s: s)
        return lines


def _batched(lines, n_rows, features, integers, batch_size, label, shuffle, seed,
             shuffle_buffer):
    """``lines`` (``n_rows`` of them) shuffled, batched and parsed (see ``tf_dataset``)."""
    from recsys_tf.backend import tf

    features = list(COLUMNS[1:] if features is None else features)
    for n in features:
        if n not in COLUMNS[1:]:
            raise KeyError(f"{n!r} is not a Criteo feature; features are {list(COLUMNS[1:])}")
    if shuffle:
        lines = lines.shuffle(min(int(shuffle_buffer), max(n_rows, 1)), seed=seed,
                              reshuffle_each_iteration=True)
    parse = make_line_parser(features, integers, label)
    # a known size lets Keras run several steps per call
    batches = lines.batch(batch_size).apply(tf.data.experimental.assert_cardinality(
        -(-n_rows // int(batch_size))))
    return batches.map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def make_line_parser(features, integers="log", label=True):
    """A tf function: ``[batch]`` Criteo lines -> ``(features dict[, label float32])``.

    Same conversions as the pandas path: I fields to float32 (NaN when empty or not a
    number) or BARS bucket strings; C fields as strings; the label as float32."""
    from recsys_tf.backend import tf

    _check_integers(integers)
    col = {c: i for i, c in enumerate(COLUMNS)}

    def parse(lines):
        lines = tf.strings.regex_replace(lines, "\r$", "")
        parts = tf.strings.split(lines, "\t").to_tensor(default_value="", shape=[None, N_FIELDS])
        out = {}
        for n in features:
            s = parts[:, col[n]]
            if n in INT_COLUMNS:
                good = tf.strings.regex_full_match(s, NUMBER_RE)
                x = tf.strings.to_number(tf.where(good, s, "nan"), tf.float64)
                good = tf.logical_and(good, tf.math.is_finite(x))       # "1e999" -> missing
                x = tf.where(good, x, float("nan"))
                if integers == "bucket":
                    b = tf.where(x > 2, tf.floor(tf.square(tf.math.log(tf.where(x > 2, x, 3.0)))),
                                 tf.where(good, x, 0.0))
                    txt = tf.strings.as_string(tf.cast(tf.where(good, b, 0.0), tf.int64))
                    out[n] = tf.where(good, txt, "")
                else:
                    out[n] = tf.cast(x, tf.float32)
            else:
                out[n] = s
        if label:
            return out, tf.strings.to_number(parts[:, 0], tf.float32)
        return out

    return parse


# -- the loader -------------------------------------------------------------------------------
def resolve_path(data_dir: str | None = None, path: str | None = None) -> str:
    """``path`` if given, else ``<data_dir>/criteo/train.txt`` (``data_dir``: the argument or
    ``$RECSYS_TF_DATA_DIR``)."""
    if path:
        return os.path.abspath(os.path.expanduser(os.fspath(path)))
    root = data_dir or os.environ.get("RECSYS_TF_DATA_DIR")
    if not root:
        raise FileNotFoundError(
            "Criteo: no file given. Put the Kaggle train.txt at <data_dir>/criteo/train.txt and "
            "pass data_dir (or set RECSYS_TF_DATA_DIR), or pass path=/path/to/train.txt, e.g. "
            "path=../shared/data/criteo-samples/kaggle_train_sample900.txt")
    return os.path.join(os.path.abspath(os.path.expanduser(os.fspath(root))), "criteo", "train.txt")


def load(data_dir: str | None = None, path: str | None = None, min_count: int = MIN_COUNT,
         integers: str = "log", on_bad_lines: str = "error", streaming="auto",
         stream_above_bytes: int = STREAM_ABOVE_BYTES, dim: int = 16,
         chunksize: int = 200_000, partition_bytes: int = 512 << 20,
         missing: str = MISSING) -> Dataset:
    """Criteo as a :class:`Dataset` (see the module docstring for protocol and paths).

    Args:
      data_dir: directory holding ``criteo/train.txt`` (default ``$RECSYS_TF_DATA_DIR``).
      path: the file itself (overrides ``data_dir``), or a glob of Criteo-format shards
        (``path='/data/criteo/day_*.txt'``: see :mod:`recsys_tf.data.criteo_shards`).
      min_count: a category enters the vocabulary with at least this many train rows.
      integers: ``"log"`` (Numeric, log1p inside the model) or ``"bucket"`` (BARS buckets).
      on_bad_lines: ``"error"`` (default) or ``"skip"`` (counted in ``info``).
      streaming: True, False or ``"auto"`` (stream files over ``stream_above_bytes``).
      dim: embedding size declared for every categorical feature.
      chunksize: rows per pandas chunk in the streaming vocabulary pass.
      partition_bytes: the streaming pass spills counts into about one partition per this
        many bytes of train data (bounds its memory).
      missing: how an I field's missing value is declared (``integers="log"``): ``"mean"``
        (the training mean), ``"fill"`` (0 before the log) or ``"indicator"`` (0 before the
        log plus a learned missing term); see :class:`~recsys_tf.features.Numeric`. Served
        input gives a missing integer as NaN.
    """
    _check_integers(integers, missing)
    _check_on_bad_lines(on_bad_lines)
    if int(min_count) < 1:
        raise ValueError(f"min_count={min_count}, expected >= 1")
    if path and any(ch in os.fspath(path) for ch in "*?["):
        from recsys_tf.data.criteo_shards import load_shards

        return load_shards(path, min_count=min_count, integers=integers,
                           on_bad_lines=on_bad_lines, dim=dim, chunksize=chunksize,
                           partition_bytes=partition_bytes, missing=missing)
    fn = resolve_path(data_dir, path)
    if not os.path.isfile(fn):
        raise FileNotFoundError(
            f"Criteo file {fn} not found. Expected the Kaggle display-advertising train.txt "
            "(tab separated: label, I1-I13, C1-C26, no header) at <data_dir>/criteo/train.txt, "
            "or pass path=... (e.g. ../shared/data/criteo-samples/kaggle_train_sample900.txt).")
    size = os.path.getsize(fn)
    if streaming == "auto":
        streaming = size > int(stream_above_bytes)
    elif streaming not in (True, False):
        raise ValueError(f"streaming={streaming!r}, expected True, False or 'auto'")
    cat_cols = CAT_COLUMNS + (INT_COLUMNS if integers == "bucket" else ())

    if not streaming:
        frame, sc, counter = read(fn, on_bad_lines, integers)
        n_tr, n_va, n_te = split_sizes(len(frame))
        train = frame.iloc[:n_tr].reset_index(drop=True)
        valid = frame.iloc[n_tr:n_tr + n_va].reset_index(drop=True)
        test = frame.iloc[n_tr + n_va:].reset_index(drop=True)
        vocabs = vocabularies(train, cat_cols, min_count)
        stats = {}
        if integers == "log":
            stats = _stats_from_sums({c: _log_stats(train[c].to_numpy(np.float64), missing)
                                      for c in INT_COLUMNS})
    else:
        sc = scan(fn, on_bad_lines)
        n_tr, n_va, n_te = split_sizes(sc.n_rows)
        train = CriteoSplit(sc, 0, n_tr, integers, "train")
        valid = CriteoSplit(sc, n_tr, n_va, integers, "valid")
        test = CriteoSplit(sc, n_tr + n_va, n_te, integers, "test")
        parts = max(1, math.ceil(size * SPLIT_FRACTIONS[0] / max(int(partition_bytes), 1)))
        vocabs, stats, counter = count_train(train.iter_frames(chunksize=chunksize, raw=True),
                                             integers, min_count, parts, missing)

    fs = feature_set(vocabs, stats, integers=integers, dim=dim, missing=missing)
    label_rate = float(train[LABEL].mean()) if n_tr else float("nan")
    info = {
        "source": "Criteo Display Advertising Challenge (Kaggle 2014), Criteo Labs; "
                  "non-commercial research use only, no redistribution; cite Criteo",
        "path": fn,
        "format": "tab separated, no header: label, I1-I13, C1-C26",
        "split": "file order: first 80% train, next 10% valid, last 10% test",
        "integers": ("log1p(max(x,0)) normalised inside the model (Numeric log=True)"
                     if integers == "log" else "BARS buckets floor(ln(x)^2) for x > 2, else x"),
        "min_count": int(min_count),
        "missing_integers": missing if integers == "log" else "own bucket",
        "vocabulary_sizes": {c: len(v) for c, v in vocabs.items()},
        "streaming": bool(streaming),
        "n_lines": int(sc.n_lines), "n_rows": int(sc.n_rows),
        "bad_lines": int(len(sc.bad_lines)),
        "bad_line_numbers": [int(b) + 1 for b in sc.bad_lines[:_MAX_BAD_REPORTED]],
        "unparsable_integers": int(counter.get("unparsable_integers", 0)),
        "n_train": int(n_tr), "n_valid": int(n_va), "n_test": int(n_te),
        "label_rate_train": label_rate,
    }
    empty = _empty_frame(list(COLUMNS))
    return Dataset(name="criteo", feature_set=fs, train=train, test=test, items=empty.iloc[:0],
                   users=empty.iloc[:0], retrieval_train=empty.iloc[:0],
                   retrieval_test=empty.iloc[:0], valid=valid, info=info)
