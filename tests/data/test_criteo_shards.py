"""Criteo from a glob of shards: split by file, vocabularies from the streaming pass equal to
those of the same rows read at once, and each input pipeline reads its own share."""
import os

import numpy as np
import pytest

from recsys_tf import data
from recsys_tf.data import criteo as C

SAMPLE = "criteo-samples/kaggle_train_sample900.txt"


@pytest.fixture
def shards(data_dir, tmp_path):
    """The 900-row sample cut into 5 files of 180 rows (day_0 .. day_4)."""
    with open(os.path.join(data_dir, SAMPLE), "rb") as f:
        lines = f.read().splitlines(keepends=True)
    for i in range(5):
        (tmp_path / f"day_{i}.txt").write_bytes(b"".join(lines[i * 180:(i + 1) * 180]))
    return tmp_path


def test_shards_split_by_file_with_the_vocabularies_of_their_train_rows(shards):
    ds = data.load("criteo", None, path=str(shards / "day_*.txt"), min_count=2)
    files = ds.info["files"]
    assert [os.path.basename(f) for f in files["train"]] == ["day_0.txt", "day_1.txt",
                                                             "day_2.txt"]
    assert [os.path.basename(f) for f in files["valid"]] == ["day_3.txt"]
    assert [os.path.basename(f) for f in files["test"]] == ["day_4.txt"]
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (540, 180, 180)
    frames = [C.read(str(shards / f"day_{i}.txt"))[0] for i in range(3)]
    import pandas as pd

    train = pd.concat(frames, ignore_index=True)
    expected = C.vocabularies(train, C.CAT_COLUMNS, 2)
    for c in C.CAT_COLUMNS:
        assert tuple(ds.feature_set[c].vocabulary) == tuple(expected[c]), c
    np.testing.assert_array_equal(ds.train["label"].to_numpy(), train["label"].to_numpy())


@pytest.mark.parametrize("pipelines", [2, 5])   # by file (3 files >= 2), by line (3 < 5)
def test_each_input_pipeline_reads_its_own_share(shards, pipelines):
    import tensorflow as tf

    ds = data.load("criteo", None, path=str(shards / "day_*.txt"), min_count=2)
    seen = []
    for i in range(pipelines):
        context = tf.distribute.InputContext(num_input_pipelines=pipelines,
                                             input_pipeline_id=i)
        batches = ds.train.tf_dataset(["C1", "I1"], batch_size=64, input_context=context)
        share = [v.decode() + "|" + str(x) + "|" + str(y) for f, label in batches
                 for v, x, y in zip(f["C1"].numpy(), f["I1"].numpy(), label.numpy())]
        assert share
        seen.append(share)
    everything = ds.train.to_frame()
    expected = sorted(f"{v}|{np.float32(x)}|{np.float32(y)}" for v, x, y in zip(
        everything["C1"], everything["I1"], everything["label"]))
    assert sorted(sum(seen, [])) == expected      # together every row once


def test_too_few_shards_or_none_are_named(shards):
    with pytest.raises(ValueError, match="expected at least 3 files"):
        data.load("criteo", None, path=str(shards / "day_[01].txt"))
    with pytest.raises(FileNotFoundError, match="no file matches"):
        data.load("criteo", None, path=str(shards / "nothing_*.txt"))


@pytest.mark.slow
def test_a_local_cluster_trains_on_the_shards(shards, tmp_path):
    """deepfm on the shards under parameter_server (2 workers reading their own files, 2
    parameter servers holding the table in 2 parts); its cluster's processes end with it."""
    import json
    import subprocess
    import sys

    from recsys_tf import distributed

    out = tmp_path / "m.json"
    run = subprocess.run(
        [sys.executable, "-m", "recsys_tf.cli", "train", "deepfm", "--data", "criteo",
         "--data-option", f"path={shards}/day_*.txt", "--data-option", "min_count=2",
         "--local-cluster", "workers=2,ps=2", "--epochs", "2", "--steps-per-epoch", "4",
         "--batch-size", "64", "--model-option", "dim=4", "--model-option", "dnn_units=[16]",
         "--min-shard-bytes", "64", "--metrics-out", str(out)],
        env=distributed.child_environment(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    m = json.loads(out.read_text())
    assert (m["dataset"], m["strategy"], m["steps"], m["n_train"]) == (
        "criteo", "parameter_server", 8, 540)
    tables = [v for k, v in m["sharded_variables"].items() if k.endswith("/embeddings_4d")]
    assert tables == [2], m["sharded_variables"]
    assert 0 <= m["auc"] <= 1 and m["restored_max_abs_diff"] <= 1e-5
