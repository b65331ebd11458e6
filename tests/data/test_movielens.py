import os
import pathlib
import shutil

import numpy as np
import pandas as pd
import pytest

from recsys_tf.data import download, movielens
from recsys_tf.features import FeatureSet

DATA = pathlib.Path(os.environ.get("RECSYS_TF_TEST_DATA_DIR",
                                   pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))
ML = DATA / "ml-100k"
REAL_FETCH = download.fetch
needs_data = pytest.mark.skipif(not (ML / "u.data").is_file(), reason=f"no MovieLens 100K in {ML}")


@pytest.fixture(scope="module")
def ml_random():
    return movielens.load(str(DATA), split="random", download=False)


@pytest.fixture(scope="module")
def ml_time():
    return movielens.load(str(DATA), split="time", download=False)


@pytest.fixture(scope="module")
def raw():
    ratings, _, _ = movielens.read_raw(str(DATA), download=False)
    return ratings


def no_network(*args, **kwargs):
    raise download.DownloadError("network unreachable (test)")


@pytest.fixture(autouse=True)
def _never_download(monkeypatch):
    monkeypatch.setattr(download, "fetch", no_network)


# -- real data -------------------------------------------------------------------------------

@needs_data
def test_counts(ml_random):
    ds = ml_random
    rows = pd.concat([ds.train, ds.test], ignore_index=True)
    assert len(rows) == 100000
    assert rows["user_id"].nunique() == 943 and rows["item_id"].nunique() == 1682
    assert len(ds.users) == 943 and len(ds.items) == 1682
    assert ds.info["n_ratings"] == 100000
    assert list(ds.items.columns) == ["item_id", "genre", "year"]
    assert set(ds.items["genre"]) <= set(movielens.GENRES)
    assert ds.items["year"].isna().sum() == 1  # one movie has no release date
    assert ds.items["year"].min() >= 1920


@needs_data
def test_random_split_sizes_and_labels(ml_random, raw):
    ds = ml_random
    assert len(ds.train) == 80000 and len(ds.test) == 20000
    key = lambda f: set(zip(f["user_id"], f["item_id"]))
    assert not key(ds.train) & key(ds.test)
    assert key(ds.train) | key(ds.test) == key(raw)
    for f in (ds.train, ds.test):
        assert (f["label"] == (f["rating"] >= 4).astype(int)).all()
        assert 0.5 < f["label"].mean() < 0.6       # 55.4% of ratings are 4 or 5
    assert ds.retrieval_train is ds.train or ds.retrieval_train.equals(ds.train)
    assert len(ds.retrieval_test) == 20000
    assert ds.valid is None


@needs_data
def test_random_split_deterministic_per_seed(ml_random):
    again = movielens.load(str(DATA), split="random", download=False)
    pd.testing.assert_frame_equal(again.train, ml_random.train)
    other = movielens.load(str(DATA), split="random", seed=7, download=False)
    assert not other.train["item_id"].equals(ml_random.train["item_id"])


@needs_data
def test_history_strictly_earlier(ml_random, raw):
    H = ml_random.feature_set["history"].max_len
    rows = pd.concat([ml_random.train, ml_random.test], ignore_index=True)
    u = rows["user_id"].to_numpy()
    ts = rows["timestamp"].to_numpy()
    hist = np.array(rows["history"].tolist(), dtype=np.int64)
    assert hist.shape == (100000, H)
    lut = np.full((944, 1683), -1, dtype=np.int64)
    lut[raw["user_id"], raw["item_id"]] = raw["timestamp"]
    valid = hist != 0
    assert (np.diff(valid.astype(int), axis=1) <= 0).all()     # padding only at the end
    hts = lut[u[:, None], hist]
    assert (hts[valid] >= 0).all()                            # history items are the user's
    assert (hts[valid] < np.broadcast_to(ts[:, None], hist.shape)[valid]).all()
    assert (np.diff(np.where(valid, hts, 0), axis=1)[valid[:, 1:]] >= 0).all()   # time order
    # length = min(H, number of the user's strictly earlier ratings)
    n_earlier = pd.Series(raw["timestamp"].to_numpy()).groupby(raw["user_id"].to_numpy()).rank(
        method="min").to_numpy() - 1
    earlier = dict(zip(zip(raw["user_id"], raw["item_id"]), n_earlier))
    want = np.minimum(H, [earlier[k] for k in zip(u, rows["item_id"])])
    np.testing.assert_array_equal(valid.sum(axis=1), want)
    # exact content for a few users
    item_genre = dict(zip(ml_random.items["item_id"], ml_random.items["genre"]))
    for user in (1, 2, 405, 943):
        mine = raw[raw["user_id"] == user].sort_values(["timestamp", "item_id"])
        for r in rows[rows["user_id"] == user].itertuples():
            prev = mine[mine["timestamp"] < r.timestamp]["item_id"].tolist()[-H:]
            assert list(r.history) == prev + [0] * (H - len(prev))
            assert list(r.history_genre) == [item_genre[i] for i in prev] + [""] * (H - len(prev))


@needs_data
def test_time_split_latest_ratings_in_test(ml_time):
    tr, te = ml_time.train, ml_time.test
    assert len(tr) + len(te) == 100000
    assert 19000 < len(te) < 21000
    last_train = tr.groupby("user_id")["timestamp"].max()
    first_test = te.groupby("user_id")["timestamp"].min()
    assert set(first_test.index) == set(range(1, 944))       # every user has test ratings
    assert (first_test >= last_train.reindex(first_test.index)).all()
    sizes = pd.concat([tr, te]).groupby("user_id").size()
    n_test = te.groupby("user_id").size()
    expect = np.maximum(1, np.round(0.2 * sizes)).astype(int)
    pd.testing.assert_series_equal(n_test, expect, check_names=False)
    assert (np.diff(tr["timestamp"].to_numpy()) >= 0).all()
    assert (np.diff(te["timestamp"].to_numpy()) >= 0).all()


@needs_data
def test_users_frame(ml_random):
    ds = ml_random
    H = ds.feature_set["history"].max_len
    assert list(ds.users.columns) == ["user_id", "age_bucket", "gender", "occupation",
                                      "zip_prefix", "history", "history_genre", "seen"]
    tr = ds.train
    for user in (1, 500, 943):
        mine = tr[tr["user_id"] == user].sort_values(["timestamp", "item_id"])
        r = ds.users.set_index("user_id").loc[user]
        assert sorted(r["seen"]) == sorted(mine["item_id"].tolist())
        last = mine["item_id"].tolist()[-H:]
        assert list(r["history"]) == last + [0] * (H - len(last))
    assert set(ds.users["age_bucket"]) <= set(movielens.AGE_BUCKETS)
    assert set(ds.users["gender"]) == {"M", "F"}


@needs_data
def test_feature_set_arrays_and_json(ml_random):
    fs = ml_random.feature_set
    assert fs.with_role("user") == ["user_id", "age_bucket", "gender", "occupation",
                                    "zip_prefix", "history", "history_genre"]
    assert fs.with_role("item") == ["item_id", "genre", "year"]
    assert fs.with_role("context") == ["hour"]
    assert fs["user_id"].dtype == "int64" and fs["item_id"].dtype == "int64"
    arrs = fs.arrays(ml_random.test)
    assert arrs["history"].dtype == np.int64 and arrs["history"].shape == (20000, 20)
    assert arrs["year"].dtype == np.float32
    yr = fs["year"]
    assert yr.mean == pytest.approx(np.nanmean(ml_random.train["year"]))
    assert FeatureSet.from_json(fs.to_json()) == fs
    for name in ("age_bucket", "gender", "occupation", "zip_prefix", "genre", "hour"):
        assert set(ml_random.train[name]) <= set(fs[name].vocabulary), name


@needs_data
def test_data_dir_forms(monkeypatch):
    assert movielens.resolve_dir(str(DATA)) == str(ML)
    assert movielens.resolve_dir(str(ML)) == str(ML)
    monkeypatch.setenv("RECSYS_TF_DATA_DIR", str(DATA))
    assert movielens.resolve_dir(None) == str(ML)
    ratings, users, items = movielens.read_raw(str(ML), download=False)
    assert (len(ratings), len(users), len(items)) == (100000, 943, 1682)


@needs_data
def test_registry(monkeypatch):
    from recsys_tf import data

    monkeypatch.setenv("RECSYS_TF_DATA_DIR", str(DATA))
    ds = data.load("movielens-100k", split="time", history_len=5, download=False)
    assert ds.name == "movielens-100k" and ds.feature_set["history"].max_len == 5


# -- broken or missing files -----------------------------------------------------------------

def _copy(tmp_path, names=("u.data", "u.user", "u.item")):
    dest = tmp_path / "ml-100k"
    dest.mkdir()
    for n in names:
        shutil.copy(ML / n, dest / n)
    return dest


@needs_data
def test_truncated_file_raises_value_error(tmp_path):
    dest = _copy(tmp_path)
    lines = (ML / "u.data").read_bytes().splitlines(keepends=True)
    (dest / "u.data").write_bytes(b"".join(lines[:5000]))
    with pytest.raises(ValueError) as e:
        movielens.load(str(tmp_path), download=False)
    msg = str(e.value)
    assert "u.data" in msg and movielens.FILES["u.data"][0] in msg
    assert "100000" in msg and "5000" in msg


@needs_data
def test_corrupt_file_raises_value_error(tmp_path):
    dest = _copy(tmp_path)
    data = bytearray((dest / "u.item").read_bytes())
    data[100] ^= 1
    (dest / "u.item").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="u.item"):
        movielens.load(str(dest), download=False)


def test_missing_dir_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        movielens.load(str(tmp_path / "nowhere"), download=False)
    msg = str(e.value)
    assert os.path.join(str(tmp_path / "nowhere"), "ml-100k", "u.data") in msg
    assert "RECSYS_TF_DATA_DIR" in msg and "download=False" in msg


def test_missing_with_failed_download(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        movielens.load(str(tmp_path), download=True)
    msg = str(e.value)
    assert "u.data" in msg and "failed" in msg and movielens.URL in msg
    assert not any(p.name.endswith(".part") for p in tmp_path.rglob("*"))


@needs_data
def test_one_missing_file_named(tmp_path):
    _copy(tmp_path, names=("u.data", "u.item"))
    with pytest.raises(FileNotFoundError, match="u.user"):
        movielens.load(str(tmp_path), download=False)


@needs_data
def test_download_path_extracts_and_verifies(tmp_path, monkeypatch):
    """The download branch, fed a local zip instead of the network."""
    import zipfile

    src = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(src, "w") as zf:
        for n in movielens.FILES:
            zf.write(ML / n, f"ml-100k/{n}")

    def fake_fetch(url, dest_path, sha256=None, timeout=20):
        assert url == movielens.URL
        shutil.copy(src, dest_path)
        return dest_path

    monkeypatch.setattr(download, "fetch", fake_fetch)
    root = tmp_path / "root"
    ratings, users, items = movielens.read_raw(str(root), download=True)
    assert len(ratings) == 100000
    for n in movielens.FILES:
        assert (root / "ml-100k" / n).is_file()


# -- download.fetch (file:// URLs, no network) ----------------------------------------------------

@pytest.fixture
def real_fetch():
    return REAL_FETCH


def test_fetch_verifies_and_caches(tmp_path, real_fetch):
    src = tmp_path / "src.bin"
    src.write_bytes(b"hello world\n" * 1000)
    sha = download.sha256_file(str(src))
    dest = tmp_path / "cache" / "out.bin"
    got = real_fetch(src.as_uri(), str(dest), sha256=sha, timeout=5)
    assert got == str(dest) and dest.read_bytes() == src.read_bytes()
    src.unlink()                                   # cached: no second read of the URL
    assert real_fetch(src.as_uri(), str(dest), sha256=sha) == str(dest)


def test_fetch_bad_checksum_leaves_nothing(tmp_path, real_fetch):
    src = tmp_path / "src.bin"
    src.write_bytes(b"data")
    dest = tmp_path / "out" / "file.bin"
    with pytest.raises(download.DownloadError, match="sha256"):
        real_fetch(src.as_uri(), str(dest), sha256="0" * 64)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_fetch_unreachable(tmp_path, real_fetch):
    with pytest.raises(download.DownloadError, match="failed"):
        real_fetch((tmp_path / "absent.bin").as_uri(), str(tmp_path / "x.bin"))
    assert not (tmp_path / "x.bin").exists()
