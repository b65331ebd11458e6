"""FeatureSet declarations, JSON round trip, arrays, and OOV behaviour inside the model."""
import json

import numpy as np
import pandas as pd
import pytest

from recsys_tf.features import Categorical, FeatureSet, Numeric, Sequence, pad_sequences


def small_set():
    return FeatureSet(
        [Categorical("user_id", vocabulary=["u1", "u2"], role="user", dim=4),
         Categorical("item_id", vocabulary=[10, 20, 30], dtype="int64", role="item", dim=4),
         Categorical("query", hash_buckets=7, dim=4),
         Numeric("price", mean=10.0, std=5.0, role="item"),
         Sequence("history", of="item_id", max_len=3)],
        label="label", user_id="user_id", item_id="item_id")


def test_json_round_trip_is_identical():
    fs = small_set()
    text = fs.to_json()
    back = FeatureSet.from_json(text)
    assert back == fs
    assert back.to_json() == text
    assert json.loads(text)["features"][1]["vocabulary"] == [10, 20, 30]
    assert back["item_id"].num_buckets == 4  # one OOV row + 3 ids
    assert back.with_role("item") == ["item_id", "price"]


def test_declaration_errors_name_the_value():
    with pytest.raises(ValueError, match="exactly one of vocabulary or hash_buckets"):
        Categorical("x")
    with pytest.raises(ValueError, match="dtype='float'"):
        Categorical("x", vocabulary=["a"], dtype="float")
    with pytest.raises(ValueError, match="of='nope'"):
        FeatureSet([Sequence("h", of="nope")])
    with pytest.raises(ValueError, match="duplicate feature name 'a'"):
        FeatureSet([Numeric("a"), Numeric("a")])
    with pytest.raises(KeyError, match="no feature named 'zzz'"):
        small_set()["zzz"]
    with pytest.raises(ValueError, match="share table"):
        FeatureSet([Categorical("a", vocabulary=["x"], table="t"),
                    Categorical("b", vocabulary=["y"], table="t")])


def test_arrays_pads_and_truncates_sequences():
    fs = small_set()
    df = pd.DataFrame({"user_id": ["u1", "u9"], "item_id": [10, 99], "query": ["a", "b"],
                       "price": [5.0, np.nan], "history": [[10, 20, 30, 40], []]})
    a = fs.arrays(df)
    assert a["history"].tolist() == [[20, 30, 40], [0, 0, 0]]
    assert a["user_id"].dtype == object and a["item_id"].dtype == np.int64
    with pytest.raises(KeyError, match="column 'price'"):
        fs.arrays(df.drop(columns="price"))
    # already padded lists keep their most recent real items when cut shorter
    assert pad_sequences([["a", "b", "c", "", ""]], 2).tolist() == [["b", "c"]]


def test_fit_numeric_uses_training_frame():
    fs = small_set().fit_numeric(pd.DataFrame({"price": [1.0, 3.0]}))
    assert fs["price"].mean == 2.0 and fs["price"].std == 1.0


def test_unknown_ids_go_to_oov_rows_inside_the_model():
    from recsys_tf.backend import tf
    from recsys_tf.layers.embedding import FeatureEmbedding

    fs = small_set()
    emb = FeatureEmbedding(fs, ["user_id", "item_id", "query", "price", "history"], dim=4,
                           numeric="field", sequence="mean")
    batch = {"user_id": tf.constant(["u1", "never-seen"]),
             "item_id": tf.constant([10, 12345], tf.int64),
             "query": tf.constant(["x", "y"]), "price": tf.constant([1.0, np.nan]),
             "history": tf.constant([[10, 0, 0], [0, 0, 0]], tf.int64)}
    out = emb(batch)
    assert emb.lookup("user_id", tf.constant(["never-seen", "u1", "u2"])).numpy().tolist() == [0, 1, 2]
    assert emb.lookup("item_id", tf.constant([12345, 10], tf.int64)).numpy().tolist() == [0, 1]
    table = emb.tables["item_id"].numpy()
    np.testing.assert_allclose(out["item_id"].numpy()[1], table[0])      # OOV row
    np.testing.assert_allclose(out["history"].numpy()[0], table[1])      # mean over 1 real id
    np.testing.assert_allclose(out["history"].numpy()[1], 0.0)           # empty history
    np.testing.assert_allclose(out["price"].numpy()[1], 0.0)             # NaN -> 0
    assert all(np.isfinite(v.numpy()).all() for v in out.values())
