"""MovieLens 100K (GroupLens): 100,000 ratings by 943 users of 1,682 movies, 1997-98.

Files: ``<data_dir>/ml-100k/{u.data,u.user,u.item}`` (``data_dir`` may also be the ``ml-100k``
folder itself), where ``data_dir`` is the argument or ``$RECSYS_TF_DATA_DIR``, else
``~/.cache/recsys_tf``. Each file is checked against the sha256 of the official release. When
files are missing and ``download=True``, the official zip is fetched (short timeout) and the
three files are extracted and verified; without network a :class:`FileNotFoundError` says what
is missing and how to provide it.

Terms (from the dataset README): research use only, no redistribution, no commercial use
without permission, cite Harper & Konstan (2015), ACM TiiS 5(4):19. Never ship the files with
the package.

Rows and features
-----------------
One row per rating: ``user_id`` (int), ``age_bucket``, ``gender``, ``occupation``,
``zip_prefix`` (first character of the zip code) - user role; ``item_id`` (int), ``genre`` (the
first genre flag set, in u.genre order; the item's category for diversity) and ``year``
(release year, NaN when unknown) - item role; ``hour`` (UTC hour of the rating, context);
``history`` / ``history_genre`` - the user's previously rated items strictly before the
rating's timestamp (time order, ties by item id; the last ``history_len``, padded at the end
with 0 / ``""``). Histories are built from all ratings, whichever split they fall in: they are
what the user had rated by then. ``label`` = ``rating >= 4``; ``rating`` and ``timestamp``
are kept.

Splits
------
* ``"random"``: the protocol of the TensorFlow Recommenders tutorials - shuffle all ratings
  and take the first 80% as train. TFRS shuffles with ``tf.random.set_seed(42)`` over the
  TFDS record order, which cannot be reproduced without TensorFlow Datasets; here the shuffle
  is ``np.random.default_rng(seed).permutation`` over the u.data row order, so the sizes and
  protocol match TFRS but not the exact rows.
* ``"time"``: for each user, the last ``test_fraction`` of their ratings by time (at least
  one; ties by item id) go to test.

``retrieval_train``/``retrieval_test`` are all rows of train/test (every rating is an implicit
interaction). ``users`` holds each user's features, latest history as of the end of train
and ``seen`` (their train items); ``items`` holds item_id, genre, year.
"""
from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pandas as pd

from recsys_tf.data import Dataset
from recsys_tf.data import data_dir as _data_dir_from_env
from recsys_tf.features import Categorical, FeatureSet, Numeric, Sequence

__all__ = ["load", "URL", "FILES", "GENRES", "AGE_BUCKETS", "resolve_dir", "read_raw"]

URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
# name -> (sha256, rows) of the official ml-100k release files.
FILES = {
    "u.data": ("06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490", 100000),
    "u.user": ("f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c", 943),
    "u.item": ("553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701", 1682),
}
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
          "Romance", "Sci-Fi", "Thriller", "War", "Western")
AGE_BUCKETS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
_AGE_EDGES = (18, 25, 35, 45, 50, 56)
HOURS = tuple(str(h) for h in range(24))
DOWNLOAD_TIMEOUT = 15


def _default_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "recsys_tf")


def resolve_dir(data_dir: str | None = None) -> str:
    """The ml-100k folder: ``data_dir`` itself if it holds u.data or is named ml-100k, else
    ``data_dir/ml-100k``; ``data_dir`` defaults to ``$RECSYS_TF_DATA_DIR``, then ~/.cache/recsys_tf."""
    root = _data_dir_from_env(data_dir) or _default_root()
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if os.path.basename(root.rstrip(os.sep)) == "ml-100k" or os.path.isfile(os.path.join(root, "u.data")):
        return root
    return os.path.join(root, "ml-100k")


def _missing_error(folder: str, missing: list[str], download_note: str) -> FileNotFoundError:
    first = os.path.join(folder, missing[0])
    return FileNotFoundError(
        f"MovieLens 100K file {first} not found (missing: {', '.join(missing)} in {folder}). "
        f"Expected the official ml-100k files u.data (100000 ratings), u.user (943 users) and "
        f"u.item (1682 movies). Provide them by unzipping {URL} so that "
        f"<data_dir>/ml-100k/u.data exists and passing data_dir=... or setting "
        f"RECSYS_TF_DATA_DIR=<data_dir>. {download_note}".rstrip())


def _download(folder: str, timeout: float) -> None:
    """Fetch the official zip into ``folder`` and extract the verified files next to it."""
    from recsys_tf.data import download

    zip_path = download.fetch(URL, os.path.join(folder, "ml-100k.zip"), timeout=timeout)
    with zipfile.ZipFile(zip_path) as zf:
        names = {os.path.basename(n): n for n in zf.namelist()}
        for name, (sha, _) in FILES.items():
            if name not in names:
                raise download.DownloadError(f"{zip_path} has no {name}")
            data = zf.read(names[name])
            got = download.sha256_bytes(data)
            if got != sha:
                raise download.DownloadError(
                    f"{name} in {zip_path}: sha256 {got} does not match the expected {sha}")
            tmp = os.path.join(folder, name + ".part")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, os.path.join(folder, name))


def _read_verified(path: str, name: str, verify: bool) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    if verify:
        from recsys_tf.data.download import sha256_bytes

        sha, rows = FILES[name]
        got = sha256_bytes(data)
        if got != sha:
            found_rows = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
            raise ValueError(
                f"MovieLens 100K file {path} is corrupt, truncated or not the official version: "
                f"expected sha256 {sha} and {rows} rows, found sha256 {got} and {found_rows} rows "
                f"({len(data)} bytes). Replace {name} with the one from {URL} "
                f"(or delete it to have it downloaded again).")
    return data


def read_raw(data_dir: str | None = None, download: bool = True, verify: bool = True,
             timeout: float = DOWNLOAD_TIMEOUT) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(ratings, users, items)`` as parsed from u.data, u.user, u.item, checked."""
    folder = resolve_dir(data_dir)
    missing = [n for n in FILES if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        if not download:
            raise _missing_error(folder, missing, "Downloading is disabled (download=False).")
        try:
            os.makedirs(folder, exist_ok=True)
            _download(folder, timeout)
        except Exception as e:  # no network, HTTP error, bad zip, read-only dir...
            raise _missing_error(folder, missing, f"Downloading {URL} failed too: {e}") from e
        missing = [n for n in FILES if not os.path.isfile(os.path.join(folder, n))]
        if missing:
            raise _missing_error(folder, missing, f"The download of {URL} did not provide them.")
    raw = {n: _read_verified(os.path.join(folder, n), n, verify) for n in FILES}

    ratings = pd.read_csv(io.BytesIO(raw["u.data"]), sep="\t", header=None,
                          names=["user_id", "item_id", "rating", "timestamp"], dtype=np.int64)
    users = pd.read_csv(io.BytesIO(raw["u.user"]), sep="|", header=None,
                        names=["user_id", "age", "gender", "occupation", "zip"],
                        dtype={"user_id": np.int64, "age": np.int64, "gender": str,
                               "occupation": str, "zip": str}, keep_default_na=False)
    item_cols = ["item_id", "title", "release_date", "video_release_date", "url", *GENRES]
    items = pd.read_csv(io.BytesIO(raw["u.item"]), sep="|", header=None, names=item_cols,
                        encoding="latin-1", keep_default_na=False,
                        dtype={"item_id": np.int64, "title": str, "release_date": str,
                               "video_release_date": str, "url": str,
                               **{g: np.int64 for g in GENRES}})
    for name, frame in (("u.data", ratings), ("u.user", users), ("u.item", items)):
        if len(frame) != FILES[name][1]:
            raise ValueError(f"MovieLens 100K file {os.path.join(folder, name)}: expected "
                             f"{FILES[name][1]} rows, parsed {len(frame)}")
    return ratings, users, items


def _age_bucket(age: np.ndarray) -> np.ndarray:
    return np.array(AGE_BUCKETS, dtype=object)[np.searchsorted(_AGE_EDGES, age, side="right")]


def _histories(user: np.ndarray, ts: np.ndarray, item: np.ndarray, H: int):
    """For rows already sorted by (user, ts, item): ``[n, H]`` positions of each row's previous
    items (strictly earlier timestamp, same user), oldest first, and a validity mask."""
    n = len(user)
    idx = np.arange(n)
    new_user = np.r_[True, user[1:] != user[:-1]]
    new_ts = new_user | np.r_[True, ts[1:] != ts[:-1]]
    user_start = np.maximum.accumulate(np.where(new_user, idx, 0))
    ts_start = np.maximum.accumulate(np.where(new_ts, idx, 0))   # first row with this (user, ts)
    count = np.minimum(ts_start - user_start, H)
    pos = (ts_start - count)[:, None] + np.arange(H)
    valid = np.arange(H)[None, :] < count[:, None]
    return np.where(valid, pos, 0), valid


def load(data_dir: str | None = None, split: str = "random", seed: int = 42,
         history_len: int = 20, test_fraction: float = 0.2, download: bool = True,
         verify: bool = True) -> Dataset:
    """MovieLens 100K as a :class:`Dataset` (see the module docstring for rows and splits).

    Args:
      data_dir: directory holding ``ml-100k/`` (or the ``ml-100k`` folder itself); default
        ``$RECSYS_TF_DATA_DIR``, then ``~/.cache/recsys_tf``.
      split: ``"random"`` (TFRS protocol) or ``"time"`` (per-user latest ratings to test).
      seed: the random split's permutation seed.
      history_len: length of ``history`` / ``history_genre``.
      test_fraction: share of ratings (random) or of each user's ratings (time) in test.
      download: fetch the official zip when files are missing.
      verify: check each file's sha256 (turn off only for a deliberately different copy).
    """
    if split not in ("random", "time"):
        raise ValueError(f"split={split!r}, expected 'random' or 'time'")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction}, expected 0 < test_fraction < 1")
    H = int(history_len)
    if H < 1:
        raise ValueError(f"history_len={history_len}, expected >= 1")
    ratings, users_raw, items_raw = read_raw(data_dir, download=download, verify=verify)

    # -- entity tables --------------------------------------------------------------------
    flags = items_raw[list(GENRES)].to_numpy()
    genre = np.array(GENRES, dtype=object)[np.where(flags.any(axis=1), flags.argmax(axis=1), 0)]
    year = pd.to_datetime(items_raw["release_date"], format="%d-%b-%Y", errors="coerce").dt.year
    items = pd.DataFrame({"item_id": items_raw["item_id"].to_numpy(np.int64), "genre": genre,
                          "year": year.to_numpy(dtype=np.float64)})
    users = pd.DataFrame({
        "user_id": users_raw["user_id"].to_numpy(np.int64),
        "age_bucket": _age_bucket(users_raw["age"].to_numpy()),
        "gender": users_raw["gender"].to_numpy(dtype=object),
        "occupation": users_raw["occupation"].to_numpy(dtype=object),
        "zip_prefix": users_raw["zip"].str[:1].to_numpy(dtype=object),
    })

    # -- one row per rating, with histories ---------------------------------------------------
    n = len(ratings)
    u = ratings["user_id"].to_numpy(np.int64)
    it = ratings["item_id"].to_numpy(np.int64)
    ts = ratings["timestamp"].to_numpy(np.int64)
    order = np.lexsort((it, ts, u))                       # by user, then time, then item
    pos, valid = _histories(u[order], ts[order], it[order], H)
    hist_sorted = np.where(valid, it[order][pos], 0)
    hist = np.empty_like(hist_sorted)
    hist[order] = hist_sorted
    genre_lut = np.full(int(items["item_id"].max()) + 1, "", dtype=object)
    genre_lut[items["item_id"].to_numpy()] = items["genre"].to_numpy()
    hist_genre = genre_lut[hist]                         # pad 0 -> ""

    uf = users.set_index("user_id").loc[u]
    itf = items.set_index("item_id").loc[it]
    rows = pd.DataFrame({
        "user_id": u,
        "age_bucket": uf["age_bucket"].to_numpy(),
        "gender": uf["gender"].to_numpy(),
        "occupation": uf["occupation"].to_numpy(),
        "zip_prefix": uf["zip_prefix"].to_numpy(),
        "item_id": it,
        "genre": itf["genre"].to_numpy(),
        "year": itf["year"].to_numpy(),
        "hour": np.array(HOURS, dtype=object)[(ts // 3600) % 24],
        "history": hist.tolist(),
        "history_genre": hist_genre.tolist(),
        "label": (ratings["rating"].to_numpy() >= 4).astype(np.int64),
        "rating": ratings["rating"].to_numpy(np.int64),
        "timestamp": ts,
    })

    # -- split --------------------------------------------------------------------------
    if split == "random":
        perm = np.random.default_rng(seed).permutation(n)
        n_train = n - int(round(test_fraction * n))
        train_idx, test_idx = perm[:n_train], perm[n_train:]
        protocol = (f"random: np.random.default_rng({seed}).permutation of all ratings (u.data row "
                    f"order), first {n_train} train, rest test (the TFRS tutorial protocol; TFRS "
                    "shuffles with TF seed 42, whose exact rows are not reproduced)")
    else:
        uo = u[order]
        new_user = np.r_[True, uo[1:] != uo[:-1]]
        starts = np.flatnonzero(new_user)
        sizes = np.diff(np.r_[starts, n])
        n_test_u = np.maximum(1, np.round(test_fraction * sizes).astype(np.int64))
        rank_from_end = np.repeat(starts + sizes, sizes) - np.arange(n)   # 1 = latest
        is_test_sorted = rank_from_end <= np.repeat(n_test_u, sizes)
        is_test = np.empty(n, dtype=bool)
        is_test[order] = is_test_sorted
        chrono = np.lexsort((it, u, ts))
        train_idx, test_idx = chrono[~is_test[chrono]], chrono[is_test[chrono]]
        protocol = (f"time: per user, the last {test_fraction:g} of their ratings by time (at "
                    "least 1; ties by item id) are test; both splits in time order")
    train = rows.iloc[train_idx].reset_index(drop=True)
    test = rows.iloc[test_idx].reset_index(drop=True)

    # -- users as of the end of train -----------------------------------------------------------
    tr_u = train["user_id"].to_numpy()
    tr_o = np.lexsort((train["item_id"].to_numpy(), train["timestamp"].to_numpy(), tr_u))
    su, si = tr_u[tr_o], train["item_id"].to_numpy()[tr_o]
    bounds = np.flatnonzero(np.r_[True, su[1:] != su[:-1], True])
    per_user = {int(su[s]): si[s:e] for s, e in zip(bounds[:-1], bounds[1:])} if len(su) else {}
    u_hist, u_hist_genre, u_seen = [], [], []
    empty = np.zeros(0, dtype=np.int64)
    for uid in users["user_id"].to_numpy():
        its = per_user.get(int(uid), empty)
        last = its[-H:]
        padded = np.zeros(H, dtype=np.int64)
        padded[: len(last)] = last
        u_hist.append(padded.tolist())
        u_hist_genre.append(genre_lut[padded].tolist())
        u_seen.append(list(dict.fromkeys(its.tolist())))
    users_frame = users.copy()
    users_frame["history"] = u_hist
    users_frame["history_genre"] = u_hist_genre
    users_frame["seen"] = u_seen

    fs = FeatureSet([
        Categorical("user_id", vocabulary=tuple(users["user_id"].tolist()), dtype="int64", role="user"),
        Categorical("age_bucket", vocabulary=AGE_BUCKETS, role="user"),
        Categorical("gender", vocabulary=tuple(sorted(users["gender"].unique())), role="user"),
        Categorical("occupation", vocabulary=tuple(sorted(users["occupation"].unique())), role="user"),
        Categorical("zip_prefix", vocabulary=tuple(sorted(users["zip_prefix"].unique())), role="user"),
        Categorical("item_id", vocabulary=tuple(items["item_id"].tolist()), dtype="int64", role="item"),
        Categorical("genre", vocabulary=GENRES, role="item"),
        Numeric("year", role="item"),
        Categorical("hour", vocabulary=HOURS, role="context"),
        Sequence("history", of="item_id", max_len=H, role="user"),
        Sequence("history_genre", of="genre", max_len=H, role="user"),
    ], label="label", user_id="user_id", item_id="item_id").fit_numeric(train)

    info = {
        "source": "MovieLens 100K (GroupLens Research, https://grouplens.org/datasets/movielens/100k/); "
                  "research use only, no redistribution; cite Harper & Konstan 2015",
        "url": URL,
        "data_dir": resolve_dir(data_dir),
        "split": split,
        "split_protocol": protocol,
        "seed": int(seed) if split == "random" else None,
        "test_fraction": float(test_fraction),
        "label": "rating >= 4",
        "histories": "previously rated items strictly before each rating's timestamp, from all "
                     "ratings (time order, ties by item id)",
        "users_as_of": "end of train (latest train history; seen = train items)",
        "n_ratings": int(n), "n_users": int(len(users)), "n_items": int(len(items)),
        "n_train": int(len(train)), "n_test": int(len(test)),
        "label_rate_train": float(train["label"].mean()),
        "label_rate_test": float(test["label"].mean()),
        "history_len": H,
    }
    return Dataset(name="movielens-100k", feature_set=fs, train=train, test=test, items=items,
                   users=users_frame, retrieval_train=train, retrieval_test=test, valid=None,
                   info=info)
