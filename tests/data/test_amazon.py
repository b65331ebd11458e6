import os

import numpy as np
import pytest

from recsys_tf.data import DATASETS, Dataset, amazon, load
from recsys_tf.features import Categorical, Sequence

FILES = {"amazon-beauty": "Beauty", "amazon-sports": "Sports_and_Outdoors",
         "amazon-toys": "Toys_and_Games"}


@pytest.fixture(scope="module")
def toys(data_dir):
    return load("amazon-toys", data_dir)


@pytest.fixture(scope="module")
def small(data_dir):
    return load("amazon-beauty", data_dir, max_users=200, max_len=5, seed=3)


def raw_sequences(data_dir, name):
    with open(os.path.join(data_dir, "amazon-s3rec", f"{name}.txt")) as f:
        return {int(p[0]): [int(x) for x in p[1:]] for p in (line.split() for line in f)}


def test_registered():
    for name in ("amazon-beauty", "amazon-sports", "amazon-toys", "amazon-grocery"):
        assert name in DATASETS


def test_toys_counts_follow_the_protocol(toys):
    assert isinstance(toys, Dataset)
    # 167,597 behaviours of 19,412 users: all but the first and last of each are train targets
    assert len(toys.train) == 2 * (167_597 - 2 * 19_412) == 257_546
    assert len(toys.test) == 2 * 19_412
    assert toys.info["items"] == 11_924 and toys.info["users"] == 19_412
    assert len(toys.items) == 11_924 and len(toys.users) == 19_412
    assert (toys.train["label"].to_numpy() == np.tile([1, 0], len(toys.train) // 2)).all()
    assert len(toys.retrieval_train) == len(toys.train) // 2
    assert (toys.retrieval_test["label"] == 1).all()


def test_feature_set(toys):
    fs = toys.feature_set
    assert fs.names == ["user_id", "item_id", "category", "history", "history_category"]
    assert (fs.label, fs.user_id, fs.item_id) == ("label", "user_id", "item_id")
    assert fs.with_role("item") == ["item_id", "category"]
    assert isinstance(fs["category"], Categorical) and fs["category"].dtype == "int64"
    assert isinstance(fs["history"], Sequence) and fs["history"].of == "item_id"
    assert fs["history_category"].of == "category" and fs["history"].max_len == 20
    x = fs.arrays(toys.test.head(6))
    assert x["history"].shape == (6, 20) and x["history"].dtype == np.int64


def test_rows_match_the_raw_sequences(small, data_dir):
    seqs = raw_sequences(data_dir, "Beauty")
    cat = dict(zip(small.items["item_id"], small.items["category"]))
    users = small.users["user_id"].tolist()
    assert len(users) == 200
    train = small.train
    for u in users[:20]:
        s = seqs[u]
        rows = train[train["user_id"] == u]
        pos, neg = rows[rows["label"] == 1], rows[rows["label"] == 0]
        assert pos["item_id"].tolist() == s[1:-1]
        assert len(neg) == len(pos)
        for k, (_, r) in enumerate(pos.iterrows(), start=1):
            assert list(r["history"]) == s[max(0, k - 5):k]
            assert list(r["history_category"]) == [cat[i] for i in s[max(0, k - 5):k]]
        assert (neg["item_id"].to_numpy() != pos["item_id"].to_numpy()).all()
        assert [list(h) for h in neg["history"]] == [list(h) for h in pos["history"]]
        test = small.test[small.test["user_id"] == u]
        assert test["item_id"].iloc[0] == s[-1] and test["label"].tolist() == [1, 0]
        assert list(test["history"].iloc[0]) == s[-6:-1]
        user = small.users[small.users["user_id"] == u].iloc[0]
        assert list(user["seen"]) == s[:-1] and list(user["history"]) == s[-6:-1]
    for frame in (small.train, small.test):
        assert frame["category"].tolist() == [cat[i] for i in frame["item_id"]]
        assert set(frame["item_id"]) <= set(small.items["item_id"])


def test_category_is_the_last_attribute(small, data_dir):
    import json

    with open(os.path.join(data_dir, "amazon-s3rec", "Beauty_item2attributes.json")) as f:
        attrs = json.load(f)
    for item, c in zip(small.items["item_id"].head(50), small.items["category"].head(50)):
        assert c == attrs[str(item)][-1]


def test_seeded(data_dir, small):
    again = load("amazon-beauty", data_dir, max_users=200, max_len=5, seed=3)
    assert again.train["item_id"].tolist() == small.train["item_id"].tolist()
    other = load("amazon-beauty", data_dir, max_users=200, max_len=5, seed=4)
    assert other.users["user_id"].tolist() != small.users["user_id"].tolist()


@pytest.mark.parametrize("name", ["amazon-sports", "amazon-grocery"])
def test_other_sets_load(data_dir, name):
    ds = load(name, data_dir, max_users=100)
    assert ds.info["users"] == 100
    x = ds.feature_set.arrays(ds.train)
    assert set(x) == set(ds.feature_set.names)
    assert (x["category"] > 0).all() and (x["history"][:, 0] > 0).all()
    assert len(ds.test) == 200


def test_grocery_full(data_dir):
    ds = load("amazon-grocery", data_dir)
    assert ds.info["users"] == 14_681 and ds.info["interactions"] == 121_892
    assert len(ds.train) == 2 * (121_892 - 2 * 14_681)
    assert ds.items["category"].min() >= 1                 # i_category 0 moved to 1; 0 = padding


def test_missing_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="Beauty.txt"):
        load("amazon-beauty", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="train.csv"):
        amazon.load_grocery(str(tmp_path))
