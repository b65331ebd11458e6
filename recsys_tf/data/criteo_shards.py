"""Criteo from many files: a glob of Criteo-format shards (e.g. Criteo 1TB's ``day_0`` ..
``day_23``), larger together than memory.

Protocol: the files matched by the glob, sorted by name (time order for day files), are split
by file: the last ``max(1, round(0.1 k))`` of ``k`` files are ``test``, the
``max(1, round(0.1 k))`` before them ``valid``, the rest ``train`` (at least 3 files). Each file
is scanned once for its rows and bad lines (:func:`recsys_tf.data.criteo.scan`, block by
block), and one streaming pass over the train files counts categories and the integer
fields' statistics in bounded memory (:func:`recsys_tf.data.criteo.count_train`: a pandas chunk
plus one counting partition spilled to disk). Features, vocabularies (``min_count``) and
integer handling are those of :mod:`recsys_tf.data.criteo`.

The splits are :class:`CriteoShards`: they stand in for DataFrames as ``CriteoSplit`` does
(``len``, ``split[column]``, ``head``), and :meth:`CriteoShards.tf_dataset` reads them with
``tf.data``; given a ``tf.distribute.InputContext`` (what a distributed dataset function
receives), each input pipeline reads its own files (``files[i::n]``), or its own lines of
every file when there are fewer files than pipelines. Every process must see the files at
the same paths (a shared file system).

Example::

    ds = data.load("criteo", path="/data/criteo/day_*.txt", min_count=10)
    # recsys-tf train deepfm --data criteo --data-option path='/data/criteo/day_*' \\
    #     --local-cluster workers=2,ps=2
"""
from __future__ import annotations

import glob
import math
import os

import pandas as pd

from recsys_tf.data import Dataset
from recsys_tf.data import criteo as C


def split_files(files):
    """``(train, valid, test)`` lists of files (see the module docstring)."""
    k = len(files)
    if k < 3:
        raise ValueError(f"{k} Criteo shard(s) {files[:3]}: expected at least 3 files (train, "
                         "valid, test are split by file)")
    held = max(1, round(0.1 * k))
    return files[:k - 2 * held], files[k - 2 * held:k - held], files[k - held:]


class CriteoShards:
    """Several files' rows as one split (each file a :class:`~recsys_tf.data.criteo.CriteoSplit`
    of all its rows)."""

    def __init__(self, parts, integers, name="split"):
        self.parts, self.integers, self.name = list(parts), integers, name
        self.columns = pd.Index(C.COLUMNS)

    def __len__(self):
        return sum(len(p) for p in self.parts)

    def __repr__(self):
        return f"CriteoShards({self.name}: {len(self)} rows in {len(self.parts)} files)"

    def __contains__(self, column):
        return column in C.COLUMNS

    @property
    def files(self):
        return [p.scan.path for p in self.parts]

    def iter_frames(self, chunksize=200_000, usecols=None, nrows=None, raw=False):
        """DataFrames of up to ``chunksize`` rows, file after file."""
        left = len(self) if nrows is None else int(nrows)
        for part in self.parts:
            if left <= 0:
                return
            for frame in part.iter_frames(chunksize=chunksize, usecols=usecols,
                                          nrows=min(left, len(part)), raw=raw):
                left -= len(frame)
                yield frame

    def to_frame(self, usecols=None):
        frames = list(self.iter_frames(usecols=usecols))
        return pd.concat(frames, ignore_index=True) if frames else self.parts[0].to_frame(usecols)

    def head(self, n=5):
        frames = list(self.iter_frames(chunksize=max(int(n), 1), nrows=n))
        return pd.concat(frames, ignore_index=True) if frames else self.to_frame()

    def __getitem__(self, column):
        if column not in C.COLUMNS:
            raise KeyError(f"{self!r} has no column {column!r}; columns are {list(C.COLUMNS)}")
        return self.to_frame(usecols=[column])[column]

    def tf_dataset(self, features=None, batch_size=256, label=True, shuffle=False, seed=0,
                   shuffle_buffer=100_000, input_context=None):
        """Batches of ``(features dict[, label])`` of this pipeline's share (see the module
        docstring), in file order or shuffled (file order per seed, then a buffer of lines)."""
        import numpy as np

        parts = list(self.parts)
        if shuffle:
            parts = [parts[i] for i in np.random.default_rng(seed).permutation(len(parts))]
        pipelines = 1 if input_context is None else input_context.num_input_pipelines
        index = 0 if input_context is None else input_context.input_pipeline_id
        by_file = pipelines > 1 and len(parts) >= pipelines
        if by_file:
            parts = parts[index::pipelines]
        lines, n = None, 0
        for part in parts:
            more = part.lines()
            lines = more if lines is None else lines.concatenate(more)
            n += len(part)
        if pipelines > 1 and not by_file:
            lines, n = lines.shard(pipelines, index), len(range(index, n, pipelines))
        return C._batched(lines, n, features, self.integers, batch_size, label, shuffle, seed,
                          shuffle_buffer)


def load_shards(pattern, min_count=C.MIN_COUNT, integers="log", on_bad_lines="error", dim=16,
                chunksize=200_000, partition_bytes=512 << 20, missing=C.MISSING) -> Dataset:
    """Criteo from the files matching ``pattern`` (see the module docstring); ``missing``: a
    missing integer's treatment, as in :func:`recsys_tf.data.criteo.load`."""
    files = sorted(glob.glob(os.path.expanduser(os.fspath(pattern))))
    if not files:
        raise FileNotFoundError(f"Criteo shards {pattern!r}: no file matches; expected a glob "
                                "of Criteo-format files, e.g. path='/data/criteo/day_*'")
    names = split_files(files)
    splits = []
    for name, group in zip(("train", "valid", "test"), names):
        parts = []
        for fn in group:
            sc = C.scan(fn, on_bad_lines)
            parts.append(C.CriteoSplit(sc, 0, sc.n_rows, integers, os.path.basename(fn)))
        splits.append(CriteoShards(parts, integers, name))
    train, valid, test = splits
    train_bytes = sum(os.path.getsize(f) for f in names[0])
    vocabs, stats, counter = C.count_train(
        train.iter_frames(chunksize=chunksize, raw=True), integers, min_count,
        max(1, math.ceil(train_bytes / max(int(partition_bytes), 1))), missing)
    fs = C.feature_set(vocabs, stats, integers=integers, dim=dim, missing=missing)
    bad = sum(len(p.scan.bad_lines) for s in splits for p in s.parts)
    info = {
        "source": "Criteo display advertising logs, Criteo Labs; non-commercial research use "
                  "only, no redistribution; cite Criteo",
        "path": os.fspath(pattern), "files": {s.name: s.files for s in splits},
        "format": "tab separated, no header: label, I1-I13, C1-C26",
        "split": "by file, sorted by name: the last 10% of files test, the 10% before valid",
        "min_count": int(min_count), "integers": integers,
        "vocabulary_sizes": {c: len(v) for c, v in vocabs.items()},
        "streaming": True, "bad_lines": int(bad),
        "unparsable_integers": int(counter.get("unparsable_integers", 0)),
        "n_train": len(train), "n_valid": len(valid), "n_test": len(test),
        "label_rate_train": float(train[C.LABEL].mean()) if len(train) else float("nan"),
    }
    empty = C._empty_frame(list(C.COLUMNS))
    return Dataset(name="criteo", feature_set=fs, train=train, test=test, items=empty.iloc[:0],
                   users=empty.iloc[:0], retrieval_train=empty.iloc[:0],
                   retrieval_test=empty.iloc[:0], valid=valid, info=info)
