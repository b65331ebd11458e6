import time

import numpy as np
import pandas as pd
import pytest

from recsys_tf.data import synthetic
from recsys_tf.features import FeatureSet

TINY = dict(n_users=50, n_items=40, n_train=2000, n_test=500)
FRAMES = ("train", "valid", "test", "users", "items", "retrieval_train", "retrieval_test")


def local_auc(labels, scores):
    """Pairwise AUC (ties count half): slow but obviously right."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = s[y], s[~y]
    gt = (pos[:, None] > neg[None, :]).sum()
    eq = (pos[:, None] == neg[None, :]).sum()
    return (gt + 0.5 * eq) / (len(pos) * len(neg))


@pytest.fixture(scope="module")
def tiny():
    return synthetic.load(seed=1, **TINY)


@pytest.fixture(scope="module")
def default():
    t = time.perf_counter()
    ds = synthetic.load()
    return ds, time.perf_counter() - t


def all_rows(ds):
    return pd.concat([ds.train, ds.valid, ds.test], ignore_index=True)


def test_tiny_is_fast():
    t = time.perf_counter()
    synthetic.load(seed=3, **TINY)
    assert time.perf_counter() - t < 1.0


def test_default_size_and_speed(default):
    ds, seconds = default
    assert seconds < 10  # ~0.4 s on a laptop-class CPU; generous for loaded CI machines
    assert len(ds.train) + len(ds.valid) == 60000 and len(ds.test) == 15000
    assert len(ds.valid) == 6000
    assert len(ds.users) == 2000 and len(ds.items) == 1000
    assert ds.items["category"].nunique() == 20


def test_deterministic_for_a_seed(tiny):
    again = synthetic.load(seed=1, **TINY)
    for name in FRAMES:
        pd.testing.assert_frame_equal(getattr(tiny, name), getattr(again, name), check_exact=True)
    assert tiny.info == again.info
    assert tiny.feature_set == again.feature_set


def test_different_seeds_differ(tiny):
    other = synthetic.load(seed=2, **TINY)
    assert not tiny.train["p_click"].equals(other.train["p_click"])
    assert not tiny.train["item_id"].equals(other.train["item_id"])


def test_oracle_auc_matches_labels_and_p_click(tiny, default):
    for ds in (tiny, default[0]):
        y, p = ds.test["label"].to_numpy(), ds.test["p_click"].to_numpy()
        assert ds.info["oracle_auc_test"] == pytest.approx(local_auc(y, p), abs=1e-9)
    y, p = tiny.test["label"].to_numpy(), tiny.test["p_click"].to_numpy()
    assert tiny.info["oracle_auc_test"] == pytest.approx(local_auc(y, p), abs=1e-9)
    eps = 1e-7
    pc = np.clip(p, eps, 1 - eps)
    ll = -np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc))
    assert tiny.info["oracle_logloss_test"] == pytest.approx(ll, rel=1e-9)


def test_default_oracle_and_ctr_in_band(default):
    ds, _ = default
    assert 0.7 < ds.info["oracle_auc_test"] < 0.9
    assert 0.2 < ds.info["ctr_train"] < 0.35
    assert 0.2 < ds.info["ctr_test"] < 0.35


def test_p_click_calibrated(default):
    rows = all_rows(default[0])
    p = rows["p_click"].to_numpy()
    assert ((p > 0) & (p < 1)).all()
    assert abs(rows["label"].mean() - p.mean()) < 0.01
    assert set(np.unique(rows["label"])) == {0, 1}


def test_time_order_and_splits(tiny):
    ts = [getattr(tiny, n)["timestamp"].to_numpy() for n in ("train", "valid", "test")]
    allts = np.concatenate(ts)
    assert (np.diff(allts) > 0).all()
    assert ts[0].max() < ts[1].min() and ts[1].max() < ts[2].min()
    hours = ((allts // 3600) % 24).astype(str)
    assert (all_rows(tiny)["hour"].to_numpy().astype(str) == hours).all()
    no_valid = synthetic.load(seed=1, valid_fraction=0.0, **TINY)
    assert no_valid.valid is None and len(no_valid.train) == TINY["n_train"]


def test_history_is_past_clicks_only(tiny):
    rows = all_rows(tiny)
    H = tiny.feature_set["history"].max_len
    item_cat = dict(zip(tiny.items["item_id"], tiny.items["category"]))
    clicks = {}
    for u, i, y, hist, hcat in zip(rows["user_id"], rows["item_id"], rows["label"],
                                   rows["history"], rows["history_category"]):
        past = clicks.setdefault(u, [])
        want = past[-H:]
        assert len(hist) == H and len(hcat) == H
        assert list(hist) == want + [""] * (H - len(want))
        assert list(hcat) == [item_cat[x] for x in want] + [""] * (H - len(want))
        if y == 1:
            past.append(i)
    assert any(h[0] == "" for h in rows["history"]) and any(h[-1] != "" for h in rows["history"])


def test_history_padding_at_end(tiny):
    arr = np.array(all_rows(tiny)["history"].tolist(), dtype=object)
    filled = arr != ""
    # once padding starts it never stops (left-aligned, padded at the end)
    assert (np.diff(filled.astype(int), axis=1) <= 0).all()


def test_users_frame_as_of_end_of_train(tiny):
    pre = pd.concat([tiny.train, tiny.valid], ignore_index=True)
    H = tiny.feature_set["history"].max_len
    assert list(tiny.users["user_id"]) == [f"u{k}" for k in range(TINY["n_users"])]
    for _, r in tiny.users.iterrows():
        its = pre.loc[(pre["user_id"] == r["user_id"]) & (pre["label"] == 1), "item_id"].tolist()
        want = its[-H:]
        assert list(r["history"]) == want + [""] * (H - len(want))
        assert list(r["seen"]) == list(dict.fromkeys(its))
    assert set(tiny.users.columns) >= {"user_id", "age_bucket", "region", "history",
                                       "history_category", "seen"}


def test_retrieval_frames_are_clicks(tiny):
    pd.testing.assert_frame_equal(tiny.retrieval_train,
                                  tiny.train[tiny.train["label"] == 1].reset_index(drop=True))
    pd.testing.assert_frame_equal(tiny.retrieval_test,
                                  tiny.test[tiny.test["label"] == 1].reset_index(drop=True))


def test_feature_set_covers_columns(tiny):
    fs = tiny.feature_set
    assert fs.label == "label" and fs.user_id == "user_id" and fs.item_id == "item_id"
    assert set(fs.names) == {"user_id", "age_bucket", "region", "item_id", "category",
                             "price_bucket", "freshness", "hour", "device", "history",
                             "history_category"}
    assert fs.with_role("item") == ["item_id", "category", "price_bucket", "freshness"]
    assert list(tiny.items.columns) == fs.with_role("item")
    assert fs["history"].of == "item_id" and fs["history_category"].of == "category"
    fr = fs["freshness"]
    assert fr.log and fr.mean != 0.0 and fr.std != 1.0
    x = np.log1p(tiny.train["freshness"].to_numpy())
    assert fr.mean == pytest.approx(x.mean()) and fr.std == pytest.approx(x.std())
    for name in fs.names:
        f = fs[name]
        if getattr(f, "vocabulary", None) is not None:
            for frame in (tiny.train, tiny.test):
                assert set(frame[name]) <= set(f.vocabulary), name
    assert set(np.concatenate(tiny.train["history"].tolist())) <= set(fs["item_id"].vocabulary) | {""}


def test_arrays_for_all_features(tiny):
    fs = tiny.feature_set
    arrs = fs.arrays(tiny.train)
    n = len(tiny.train)
    assert set(arrs) == set(fs.names)
    for name, a in arrs.items():
        assert a.shape[0] == n, name
    assert arrs["history"].shape == (n, 20) and arrs["history_category"].shape == (n, 20)
    assert arrs["freshness"].dtype == np.float32
    np.testing.assert_array_equal(arrs["history"], np.array(tiny.train["history"].tolist(), dtype=object))
    fs.arrays(tiny.users, fs.with_role("user"))
    fs.arrays(tiny.items, fs.with_role("item"))


def test_feature_set_json_round_trip(tiny):
    fs = tiny.feature_set
    fs2 = FeatureSet.from_json(fs.to_json())
    assert fs2 == fs
    assert fs2["freshness"].mean == fs["freshness"].mean


def test_history_len_option():
    ds = synthetic.load(seed=0, history_len=5, **TINY)
    assert ds.feature_set["history"].max_len == 5
    assert all(len(h) == 5 for h in ds.train["history"])
    assert all(len(h) == 5 for h in ds.users["history"])


def test_registry_and_bad_args():
    from recsys_tf import data

    ds = data.load("synthetic", seed=0, **TINY)
    assert ds.name == "synthetic" and ds.info["seed"] == 0
    with pytest.raises(ValueError, match="n_users"):
        synthetic.load(n_users=0)
    with pytest.raises(ValueError, match="valid_fraction"):
        synthetic.load(valid_fraction=1.0, **TINY)


def test_interest_drift_is_planted():
    sim = synthetic.generate(seed=0, **TINY)
    log = sim["log"]
    # the hidden interest category changes over time for most users
    changes = log.groupby("user_id")["interest"].nunique()
    assert (changes > 1).mean() > 0.5
    # clicks are more likely on the current interest category
    match = log["category"] == log["interest"]
    assert log.loc[match, "label"].mean() > log.loc[~match, "label"].mean() + 0.1
