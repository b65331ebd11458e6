"""Criteo (Kaggle format) loader: the real 900-row sample, bad lines, OOV thresholds, the
streaming path against the in-memory one, the Criteo-format synthetic set, and the CLI."""
import json
import os

import numpy as np
import pandas as pd
import pytest

from recsys_tf import data
from recsys_tf.data import criteo as C
from recsys_tf.data import criteo_synthetic as S

SAMPLE = os.path.join("criteo-samples", "kaggle_train_sample900.txt")


def _line(label=0, ints=None, cats=None):
    ints = [str(i) for i in range(13)] if ints is None else ints
    cats = [f"{k:08x}" for k in range(26)] if cats is None else cats
    return "\t".join([str(label), *ints, *cats])


def _write(path, lines, end="\n"):
    path.write_text(end.join(lines) + end)
    return str(path)


@pytest.fixture(scope="module")
def sample(data_dir):
    path = os.path.join(data_dir, SAMPLE)
    if not os.path.exists(path):
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    """200 rows of the synthetic set written in the Kaggle format."""
    path = tmp_path_factory.mktemp("criteo") / "train.txt"
    return S.write(str(path), n_rows=200, seed=5)


# -- the real sample ---------------------------------------------------------------------------
def test_real_sample_counts_split_and_types(sample):
    ds = data.load("criteo", None, path=sample)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (720, 90, 90)
    assert ds.info["n_rows"] == 900 and ds.info["bad_lines"] == 0
    total_pos = sum(int(f["label"].sum()) for f in (ds.train, ds.valid, ds.test))
    assert total_pos == 176                                    # 176 positives (SOURCE.md)
    assert ds.info["label_rate_train"] == pytest.approx(ds.train["label"].mean())
    first = ds.train.iloc[0]                                  # the widely quoted first row
    assert first["label"] == 0 and first["I1"] == 1 and first["I5"] == 1382
    assert np.isnan(first["I12"]) and first["C1"] == "68fd1e64" and first["C26"] == "9727dd16"
    assert ds.train["C1"].map(type).eq(str).all()
    fs = ds.feature_set
    assert fs.names == list(C.COLUMNS[1:]) and fs.label == "label"
    assert fs["I5"].log and fs["I5"].std > 0
    # vocabularies come from the 720 train rows: each kept value occurs >= 10 times there
    counts = ds.train["C1"].value_counts()
    assert set(fs["C1"].vocabulary) == set(counts[counts >= 10].index)


def test_real_sample_streaming_matches_in_memory(sample):
    a = data.load("criteo", None, path=sample)
    b = data.load("criteo", None, path=sample, streaming=True)
    assert isinstance(b.train, C.CriteoSplit) and len(b.test) == 90
    for fa, fb in zip(a.feature_set, b.feature_set):
        if hasattr(fa, "vocabulary"):
            assert fa == fb
        else:
            assert (fa.mean, fa.std) == pytest.approx((fb.mean, fb.std), rel=1e-9)
    np.testing.assert_array_equal(b.test["label"].to_numpy(), a.test["label"].to_numpy())


# -- bad input ----------------------------------------------------------------------------------
def test_wrong_field_count_names_the_line(tmp_path):
    lines = [_line() for _ in range(5)]
    lines[2] = lines[2] + "\textra"                            # line 3: 41 fields
    path = _write(tmp_path / "bad.txt", lines)
    with pytest.raises(ValueError, match=r"bad.txt: line 3: expected 40 fields \(found 41"):
        data.load("criteo", None, path=path)
    with pytest.raises(ValueError, match="line 3"):
        data.load("criteo", None, path=path, streaming=True)


def test_bad_label_and_short_line_are_bad_lines(tmp_path):
    lines = [_line() for _ in range(6)]
    lines[1] = _line(label=2)
    lines[4] = "\t".join(lines[4].split("\t")[:30])
    path = _write(tmp_path / "bad.txt", lines)
    with pytest.raises(ValueError, match="line 2: the label"):
        C.read(path)
    frame, sc, _ = C.read(path, on_bad_lines="skip")
    assert len(frame) == 4 and sc.bad_examples[1][:2] == (5, 30)


@pytest.mark.parametrize("streaming", [False, True])
def test_skip_mode_counts_bad_lines(tmp_path, streaming):
    lines = [_line(label=i % 2, cats=[f"{i % 3:08x}"] * 26) for i in range(20)]
    lines[0] = "garbage"
    lines[7] = lines[7] + "\t"
    lines[19] = ""                                             # a blank last line
    path = _write(tmp_path / "bad.txt", lines)
    ds = data.load("criteo", None, path=path, on_bad_lines="skip", min_count=1,
                   streaming=streaming)
    assert ds.info["bad_lines"] == 3 and ds.info["bad_line_numbers"] == [1, 8, 20]
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (13, 2, 2)
    labels = np.concatenate([np.asarray(f["label"]) for f in (ds.train, ds.valid, ds.test)])
    np.testing.assert_array_equal(labels, [i % 2 for i in range(20) if i not in (0, 7, 19)])


def test_unparsable_integer_is_missing_and_counted(tmp_path):
    ints = [str(i) for i in range(13)]
    ints[4] = "abc"
    path = _write(tmp_path / "x.txt", [_line(ints=ints)] + [_line()] * 9)
    ds = data.load("criteo", None, path=path)
    assert np.isnan(ds.train["I5"].iloc[0]) and ds.info["unparsable_integers"] == 1


def test_crlf_and_missing_final_newline(tmp_path, small_file):
    text = open(small_file).read()
    crlf = tmp_path / "crlf.txt"
    crlf.write_text(text.rstrip("\n").replace("\n", "\r\n"))
    a = data.load("criteo", None, path=small_file, min_count=1)
    for streaming in (False, True):
        b = data.load("criteo", None, path=str(crlf), min_count=1, streaming=streaming)
        assert b.feature_set == a.feature_set
        pd.testing.assert_frame_equal(b.test.head(20), a.test.head(20))


def test_missing_file_says_how_to_provide_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="criteo/train.txt"):
        data.load("criteo", str(tmp_path))


# -- vocabularies / OOV ---------------------------------------------------------------------------
def test_oov_threshold_counts_train_rows_only(tmp_path):
    # C1 values: "a" x6 and "b" x2 in train (rows 0-7), "c" x2 in valid/test (rows 8-9)
    c1 = ["a"] * 6 + ["b"] * 2 + ["c"] * 2
    lines = [_line(cats=[v] + ["z"] * 25) for v in c1]
    path = _write(tmp_path / "t.txt", lines)
    for streaming in (False, True):
        ds = data.load("criteo", None, path=path, min_count=3, streaming=streaming)
        assert ds.feature_set["C1"].vocabulary == ("a",)
        ds = data.load("criteo", None, path=path, min_count=2, streaming=streaming)
        assert ds.feature_set["C1"].vocabulary == ("a", "b")          # by count, then value
        ds = data.load("criteo", None, path=path, min_count=100, streaming=streaming)
        assert ds.feature_set["C1"].vocabulary == ("a",)              # the top value is kept


def test_unknown_categories_never_error_at_serving(small_file):
    from recsys_tf.backend import tf
    from recsys_tf.models.deepfm import DeepFM

    ds = data.load("criteo", None, path=small_file)
    model = DeepFM(ds.feature_set, dim=4, dnn_units=(8,))
    batch = ds.feature_set.arrays(ds.test.head(3))
    batch = {k: tf.constant(v) for k, v in batch.items()}
    batch["C3"] = tf.constant(["never-seen", "", "ffffffff"])
    batch["I2"] = tf.constant([np.nan, -5.0, 1e9], tf.float32)
    p = model(batch).numpy()
    assert p.shape == (3,) and np.isfinite(p).all()


# -- streaming against in-memory ------------------------------------------------------------------
@pytest.mark.parametrize("integers", ["log", "bucket"])
def test_streaming_yields_the_same_features(tmp_path, small_file, monkeypatch, integers):
    from recsys_tf import training

    monkeypatch.setattr(C, "_OFFSET_EVERY", 16)           # exercise seeking by line offsets
    lines = open(small_file).read().rstrip("\n").split("\n")
    lines.insert(170, "broken\tline")                      # a bad line inside the valid split
    path = _write(tmp_path / "t.txt", lines)
    kw = dict(path=path, integers=integers, on_bad_lines="skip", min_count=2)
    mem = data.load("criteo", None, streaming=False, **kw)
    st = data.load("criteo", None, streaming=True, chunksize=37, partition_bytes=4000, **kw)
    assert st.info["bad_line_numbers"] == [171]
    assert mem.feature_set.to_dict()["features"][13:] == st.feature_set.to_dict()["features"][13:]
    for fm, fs_ in zip(mem.feature_set.features[:13], st.feature_set.features[:13]):
        if integers == "bucket":
            assert fm == fs_
        else:
            assert (fm.mean, fm.std) == pytest.approx((fs_.mean, fs_.std), rel=1e-9)
    fs = mem.feature_set
    for split in ("train", "valid", "test"):
        a, b = getattr(mem, split), getattr(st, split)
        assert len(a) == len(b)
        pd.testing.assert_frame_equal(b.to_frame(), a, check_dtype=False)
        xa = training.make_dataset(fs, a, fs.names, 64, "label")
        xb = training.make_dataset(fs, b, fs.names, 64, "label")
        for (fa, ya), (fb, yb) in zip(xa, xb):
            np.testing.assert_array_equal(ya.numpy(), yb.numpy())
            for n in fs.names:
                va, vb = fa[n].numpy(), fb[n].numpy()
                if va.dtype.kind == "f":
                    np.testing.assert_array_equal(np.isnan(va), np.isnan(vb))
                    np.testing.assert_allclose(np.nan_to_num(va), np.nan_to_num(vb))
                else:
                    np.testing.assert_array_equal(va, vb)


def test_partitioned_counter_spills_and_matches(small_file):
    frame, _, _ = C.read(small_file)
    counter = C._PartitionedCounter(C.CAT_COLUMNS, partitions=3, max_buffer=50)
    try:
        for s in range(0, len(frame), 40):
            counter.add(frame.iloc[s:s + 40])
        assert counter.spilled
        got = counter.vocabularies(2)
    finally:
        counter.close()
    assert got == C.vocabularies(frame, C.CAT_COLUMNS, 2)


def test_streaming_trains_and_evaluates(small_file):
    from recsys_tf import training
    from recsys_tf.models.deepfm import DeepFM

    ds = data.load("criteo", None, path=small_file, streaming=True, min_count=2)
    model = DeepFM(ds.feature_set, dim=4, dnn_units=(8,))
    fit = training.train_ranker(model, ds, epochs=1, batch_size=32, verbose=0)
    assert fit["epochs_run"] == 1 and "val_auc" in fit["history"]
    scores = training.evaluate_ranker(model, ds)
    assert 0.0 <= scores["auc"] <= 1.0 and scores["logloss"] > 0


# -- helpers -----------------------------------------------------------------------------------
def test_bucketise_and_split_sizes():
    got = C.bucketise([np.nan, -2, 0, 2, 3, 100, 2.0])
    assert got.tolist() == ["", "-2", "0", "2", "1", "21", "2"]    # floor(ln(100)^2) = 21
    assert C.split_sizes(900) == (720, 90, 90)
    assert C.split_sizes(17) == (13, 2, 2)


# -- the Criteo-format synthetic set ----------------------------------------------------------
def test_synthetic_is_criteo_format_with_an_oracle(tmp_path):
    ds = data.load("criteo-synthetic", None, n_rows=3000, seed=1)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (2400, 300, 300)
    assert list(ds.train.columns) == list(C.COLUMNS) + ["p_click"]
    assert ds.feature_set.names == list(C.COLUMNS[1:])
    assert 0.15 < ds.info["label_rate_train"] < 0.35
    assert 0.7 < ds.info["oracle_auc_test"] < 0.9
    assert ds.train["C1"].str.fullmatch("[0-9a-f]{8}|").all()
    again = data.load("criteo-synthetic", None, n_rows=3000, seed=1)
    pd.testing.assert_frame_equal(again.test, ds.test)
    # written in the Kaggle format, it reads back as the same rows
    path = S.write(str(tmp_path / "syn.txt"), n_rows=500, seed=1)
    back, _, _ = C.read(path)
    gen = S.generate(500, seed=1)
    pd.testing.assert_frame_equal(back, gen[list(C.COLUMNS)], check_dtype=False)


# -- the command line ------------------------------------------------------------------------
def test_cli_trains_deepfm_on_the_real_sample(sample, tmp_path):
    from recsys_tf.cli import main

    out = tmp_path / "m.json"
    rc = main(["train", "deepfm", "--data", "criteo", "--data-option", f"path={sample}",
               "--epochs", "1", "--batch-size", "64", "--model-option", "dim=4",
               "--model-option", "dnn_units=[8]", "--metrics-out", str(out)])
    assert rc == 0
    m = json.loads(out.read_text())
    assert m["dataset"] == "criteo" and m["n_train"] == 720 and m["n_test"] == 90
    assert 0.0 <= m["auc"] <= 1.0 and m["logloss"] > 0
