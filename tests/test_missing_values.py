"""Missing numeric values as a declared choice of a Numeric feature: the transform's golden
values, the FeatureSet JSON, the Criteo loaders' statistics, and an export that serves rows
with missing fields as the trained model scores them."""
import json
import math

import numpy as np
import pytest

from recsys_tf import data, models, pipeline
from recsys_tf.backend import tf
from recsys_tf.data import criteo
from recsys_tf.export import read_model_card
from recsys_tf.features import Categorical, FeatureSet, Numeric
from recsys_tf.layers.embedding import FeatureEmbedding, normalise, normalise_many

X = np.array([np.nan, 0.0, math.e - 1.0, 5.0], dtype=np.float32)
MEAN, STD = 0.5, 2.0
# log1p(max(x, 0)) of [0, e - 1, 5] is [0, 1, log 6]
GOLDEN = {
    "mean": [0.0, (0.0 - MEAN) / STD, (1.0 - MEAN) / STD, (math.log(6.0) - MEAN) / STD],
    # missing -> fill_value 3 before the log: log1p(3) = log 4
    "fill": [(math.log(4.0) - MEAN) / STD, (0.0 - MEAN) / STD, (1.0 - MEAN) / STD,
             (math.log(6.0) - MEAN) / STD],
}
GOLDEN["indicator"] = GOLDEN["fill"]


@pytest.mark.parametrize("missing", ["mean", "fill", "indicator"])
def test_normalise_golden_values(missing):
    f = Numeric("I1", mean=MEAN, std=STD, log=True, missing=missing, fill_value=3.0)
    np.testing.assert_allclose(f.normalise(X), GOLDEN[missing], rtol=1e-6)
    np.testing.assert_allclose(normalise(f, tf.constant(X)).numpy(), GOLDEN[missing], rtol=1e-6)


def test_normalise_many_mixes_modes_per_column():
    feats = [Numeric("a", mean=MEAN, std=STD, log=True),
             Numeric("b", mean=MEAN, std=STD, log=True, missing="fill", fill_value=3.0),
             Numeric("c", mean=1.0, std=1.0, missing="fill", fill_value=-2.0)]
    x = np.stack([X, X, np.array([np.nan, 1.0, 2.0, 3.0], np.float32)], axis=1)
    got = normalise_many(feats, tf.constant(x)).numpy()
    np.testing.assert_allclose(got[:, 0], GOLDEN["mean"], rtol=1e-6)
    np.testing.assert_allclose(got[:, 1], GOLDEN["fill"], rtol=1e-6)
    np.testing.assert_allclose(got[:, 2], [-3.0, 0.0, 1.0, 2.0], rtol=1e-6)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("numeric", ["value", "field"])
def test_indicator_adds_a_learned_term_where_missing(fused, numeric):
    fs = FeatureSet([Numeric("a", mean=MEAN, std=STD, log=True),
                     Numeric("b", mean=MEAN, std=STD, log=True, missing="indicator",
                             fill_value=3.0)])
    emb = FeatureEmbedding(fs, ["a", "b"], dim=2, numeric=numeric, fused=fused)
    x = {"a": tf.constant(X), "b": tf.constant(X)}
    before = {k: v.numpy() for k, v in emb(x).items()}
    missing = [v for v in emb.trainable_weights if "missing" in v.name]
    assert len(missing) == 1 and float(tf.reduce_sum(tf.abs(missing[0]))) == 0.0   # starts at 0
    missing[0].assign(tf.fill(missing[0].shape, 0.25))
    after = {k: v.numpy() for k, v in emb(x).items()}
    np.testing.assert_allclose(after["a"], before["a"])              # "mean": no learned term
    np.testing.assert_allclose(after["b"][1:], before["b"][1:])      # present values unchanged
    np.testing.assert_allclose(after["b"][0], before["b"][0] + 0.25, rtol=1e-6)


def test_feature_set_json_round_trip_keeps_missing():
    fs = FeatureSet([Categorical("C1", vocabulary=["a", ""]),
                     Numeric("I1", mean=1.5, std=0.5, log=True, missing="fill", fill_value=0.0),
                     Numeric("I2", missing="indicator", fill_value=-1.0),
                     Numeric("I3")])
    d = json.loads(fs.to_json())
    assert [(f.get("missing"), f.get("fill_value")) for f in d["features"][1:]] == [
        ("fill", 0.0), ("indicator", -1.0), ("mean", 0.0)]
    back = FeatureSet.from_json(fs.to_json())
    assert back == fs and back["I1"].missing == "fill" and back["I2"].fill_value == -1.0
    # a declaration written before the option existed reads as the old behaviour
    for f in d["features"][1:]:
        f.pop("missing"), f.pop("fill_value")
    assert FeatureSet.from_dict(d)["I1"].missing == "mean"


def test_bad_declarations_name_the_value():
    with pytest.raises(ValueError, match="missing='zero'"):
        Numeric("I1", missing="zero")
    with pytest.raises(ValueError, match="fill_value=nan"):
        Numeric("I1", missing="fill", fill_value=float("nan"))
    with pytest.raises(ValueError, match="missing='zero'"):
        data.load("criteo-synthetic", n_rows=100, missing="zero")


def test_fit_numeric_uses_the_filled_values():
    import pandas as pd

    frame = pd.DataFrame({"x": [np.nan, 0.0, math.e - 1.0, np.nan]})
    fs = FeatureSet([Numeric("x", log=True, missing="fill"), Numeric("y", log=True)])
    fs = FeatureSet([fs["x"]]).fit_numeric(frame)
    assert fs["x"].mean == pytest.approx(0.25) and fs["x"].std == pytest.approx(math.sqrt(3) / 4)
    stats = criteo._stats_from_sums({"x": criteo._log_stats(frame["x"].to_numpy(), "fill")})
    assert stats["x"] == pytest.approx((0.25, math.sqrt(3) / 4))
    stats = criteo._stats_from_sums({"x": criteo._log_stats(frame["x"].to_numpy(), "mean")})
    assert stats["x"] == pytest.approx((0.5, 0.5))


def test_criteo_file_loader_declares_missing(tmp_path):
    from recsys_tf.data import criteo_synthetic

    path = criteo_synthetic.write(str(tmp_path / "train.txt"), n_rows=400, seed=3)
    for streaming in (False, True):
        ds = criteo.load(path=path, min_count=2, missing="fill", streaming=streaming)
        f = ds.feature_set["I1"]
        assert (f.missing, f.fill_value, f.log) == ("fill", 0.0, True)
        x = ds.train["I1"].to_numpy(np.float64)
        assert np.isnan(x).any()
        z = np.log1p(np.maximum(np.where(np.isnan(x), 0.0, x), 0.0))
        assert f.mean == pytest.approx(z.mean()) and f.std == pytest.approx(z.std())


@pytest.mark.parametrize("model_name,missing", [("deepfm", "indicator"), ("dcn_v2", "fill"),
                                                ("wide_deep", "indicator")])
def test_export_serves_missing_as_trained(tmp_path, model_name, missing):
    """A model trained on rows with missing integers, exported and reloaded: the served scores
    of rows with missing fields (NaN in the request) equal the in-process scores, and the
    exported card declares the same missing handling."""
    ds = data.load("criteo-synthetic", n_rows=3000, seed=1, min_count=5, missing=missing)
    metrics, model = pipeline.train(model_name, ds, epochs=1, batch_size=256, verbose=0,
                                    export_dir=str(tmp_path),
                                    options={"dim": 4, "dnn_units": (16,)})
    rows = ds.test.head(64)
    x = ds.feature_set.arrays(rows, model.features)
    assert np.isnan(x["I1"]).any() and (~np.isnan(x["I1"])).any()
    if missing == "indicator":   # the learned missing term moved off 0 in training
        learned = [v for v in model.trainable_weights if "missing" in v.name]
        assert learned and all(float(tf.reduce_max(tf.abs(v))) > 0 for v in learned)
    tensors = {k: tf.constant(v) for k, v in x.items()}
    want = model(tensors, training=False).numpy()
    fn = tf.saved_model.load(metrics["export_path"]).signatures["serving_default"]
    got = fn(**tensors)["probability"].numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    # missing is not the fill value: the same row with I1 = 0 given scores differently for an
    # indicator, the same for a plain fill
    filled = dict(tensors, I1=tf.constant(np.where(np.isnan(x["I1"]), 0.0, x["I1"])
                                          .astype(np.float32)))
    got_filled = fn(**filled)["probability"].numpy()
    miss = np.isnan(x["I1"])
    if missing == "fill":
        np.testing.assert_allclose(got_filled, got, atol=1e-6)
    else:
        assert np.abs(got_filled[miss] - got[miss]).max() > 1e-5
        np.testing.assert_allclose(got_filled[~miss], got[~miss], atol=1e-6)
    card = read_model_card(metrics["export_path"])
    declared = {f["name"]: f for f in card["features"]["features"]}
    assert declared["I1"]["missing"] == missing and declared["I1"]["fill_value"] == 0.0
