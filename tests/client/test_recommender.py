"""The client against a real bundled server on 127.0.0.1: retrieve -> rank -> re-rank."""
import os

import numpy as np
import pytest

from recsys_tf.client import ClientOptions
from recsys_tf.client import recommender as client_module


def Recommender(*args, timeout=30.0, **kwargs):
    """The client with a 30 s deadline: these tests check answers, not the clock (the deadline
    tests are test_faults.py's), and a loaded 2-core machine took over the default 2 s for a
    model's first call (the retrieval stage has 40% of the deadline)."""
    return client_module.Recommender(*args, timeout=timeout, **kwargs)


def test_recommend_returns_k_distinct_unseen_items(server, tables, tiny_synthetic, context):
    ds = tiny_synthetic
    users = ds.test.user_id.drop_duplicates().head(3).tolist()
    with Recommender(server, tables, ranker="deepfm") as rec:
        for u in users:
            res = rec.recommend(u, k=10, context=context(u), n_candidates=30, diversity=0.3)
            assert res.degraded is None, res.degraded
            ids = [r.item_id for r in res.items]
            assert len(ids) == 10 and len(set(ids)) == 10
            seen = set(ds.users.set_index("user_id").loc[u, "seen"])
            assert not seen & set(ids)
            assert set(ids) <= set(ds.items.item_id)
            assert all(0 < r.ranking_score < 1 for r in res.items)
            assert {"retrieval", "ranking", "rerank", "total"} <= set(res.timings_ms)


def test_ranking_scores_equal_the_keras_model(server, tables, trained, tiny_synthetic, context):
    """What the client sends the ranker (built from metadata) is the right feature row."""
    ds = tiny_synthetic
    _, model = trained["deepfm"]
    u = ds.test.user_id.iloc[0]
    ctx = context(u)
    with Recommender(server, tables, ranker="deepfm") as rec:
        res = rec.recommend(u, k=5, context=ctx, n_candidates=20)
    user = ds.users.set_index("user_id").loc[u]
    items = ds.items.set_index("item_id").loc[[r.item_id for r in res.items]].reset_index()
    frame = items.assign(user_id=u, **{c: user[c] for c in ("age_bucket", "region")},
                         history=[user["history"]] * len(items),
                         history_category=[user["history_category"]] * len(items), **ctx)
    from recsys_tf.backend import tf

    x = {k: tf.constant(v) for k, v in ds.feature_set.arrays(frame, model.features).items()}
    np.testing.assert_allclose([r.ranking_score for r in res.items], model(x).numpy(), atol=1e-5)


def test_diversity_zero_is_ranking_order(server, tables, users):
    u, ctx = users(1)
    with Recommender(server, tables) as rec:
        res = rec.recommend(u, k=8, context=ctx, diversity=0.0)
    scores = [r.final_score for r in res.items]
    assert scores == sorted(scores, reverse=True)


def test_ranker_down_degrades_to_retrieval_order(server, tables, user):
    u, ctx = user
    with Recommender(server, tables, ranker="no_such_ranker") as rec:
        res = rec.recommend(u, k=5, context=ctx)
    assert res.degraded and "ranker failed (NOT_FOUND)" in res.degraded
    assert len(res.items) == 5 and all(r.ranking_score is None for r in res.items)
    r = [x.retrieval_score for x in res.items]
    assert r == sorted(r, reverse=True)


def test_retrieval_down_degrades_to_popular_items(server, tables, user):
    u, ctx = user
    with Recommender(server, tables, retrieval_model="no_such_retrieval") as rec:
        res = rec.recommend(u, k=5, context=ctx)
    assert res.degraded and "most popular" in res.degraded
    assert len(res.items) == 5
    with Recommender(server, tables, retrieval_model="no_such_retrieval",
                     options=ClientOptions(raise_errors=True)) as rec:
        import grpc

        with pytest.raises(grpc.RpcError):
            rec.recommend(u, k=5)


def test_unknown_user_gets_recommendations(server, tables):
    with Recommender(server, tables) as rec:
        res = rec.recommend("user-never-seen", k=5)
    assert len(res.items) == 5 and res.degraded is None
    assert any("sent as unknown" in n for n in res.notes)


# ---------------------------------------------------------------------------------------------
# results, rules, diversity, exploration (against the shared session server)

import asyncio  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402

from recsys_tf.client import rerank  # noqa: E402
from recsys_tf.client import (  # noqa: E402
    Boost,
    InMemoryItemStore,
    RequestBuilder,
    RequestError,
    Rules,
)
from recsys_tf.client.calls import CHANNELS  # noqa: E402
from recsys_tf.client.grpc_client import ServingClient  # noqa: E402


class Counting:
    """A ServingClient stand-in that counts metadata reads and Predict calls."""

    def __init__(self, target):
        self.real = ServingClient(target)
        self.signature_calls, self.predicts = [], []

    def signature(self, model, *args, **kwargs):
        self.signature_calls.append((model, kwargs.get("refresh")))
        return self.real.signature(model, *args, **kwargs)

    def predict(self, model, inputs, **kwargs):
        self.predicts.append(model)
        return self.real.predict(model, inputs, **kwargs)


def test_result_explains_every_item(server, tables, users):
    u, ctx = users(0)
    with Recommender(server, tables, ranker="deepfm") as rec:
        res = rec.recommend(u, k=6, context=ctx, n_candidates=25, diversity=0.4)
    assert res.degraded is None and res.failures == {} and res.retries == 0
    assert res.models == {"retrieval": {"name": "two_tower", "version": 1},
                          "ranker": {"name": "deepfm", "version": 1, "signature": "one_user"}}
    for stage in ("user", "retrieval", "retrieval_build", "hydrate", "ranking", "ranking_build",
                  "rerank", "total"):
        assert res.timings_ms[stage] >= 0, stage
    for pos, r in enumerate(res.items, 1):
        why = r.reasons
        assert why["retrieval_score"] == r.retrieval_score
        assert why["ranking_score"] == r.ranking_score
        assert r.final_score == r.ranking_score  # no calibration, blending or boosts asked for
        assert why["mmr_position"] == pos and why["relevance_rank"] >= 1
        assert why["mmr_penalty"] >= 0 if pos > 1 else why["mmr_penalty"] == 0
    assert res.items[0].reasons["relevance_rank"] == 1
    json.dumps(res.to_dict())  # plain JSON


def test_business_rules_hand_checked(server, tables, tiny_synthetic, users):
    """Exclusions, per-category caps, a boost, freshness and calibration, each visible in the
    reasons and each recomputed here from the ranker's raw probability."""
    ds = tiny_synthetic
    u, ctx = users(0)
    items = ds.items.set_index("item_id")
    with Recommender(server, tables, ranker="deepfm") as rec:
        plain = rec.recommend(u, k=10, context=ctx, n_candidates=40)
        blocked = [plain.items[0].item_id, plain.items[1].item_id]
        banned_cat = items.loc[plain.items[2].item_id, "category"]
        # a category that survives the exclusions: with a cap of 2 and at most 5 categories
        # left, every surviving category is in the top 10, so the boosted one shows
        promo_cat = next(items.loc[r.item_id, "category"] for r in plain.items[3:]
                         if items.loc[r.item_id, "category"] != banned_cat)
        rules = Rules(exclude=tuple(blocked), exclude_values={"category": [banned_cat]},
                      category_cap=2,
                      boosts=(Boost("promo", factor=1.5, add=0.01, column="category",
                                    values=(promo_cat,)),),
                      freshness_column="freshness", freshness_half_life=50.0,
                      freshness_strength=0.3, calibration=(2.0, 0.1))
        res = rec.recommend(u, k=10, context=ctx, n_candidates=40, rules=rules)
    assert res.degraded is None
    ids = [r.item_id for r in res.items]
    assert not set(blocked) & set(ids)
    cats = [items.loc[i, "category"] for i in ids]
    assert banned_cat not in cats
    assert max(cats.count(c) for c in set(cats)) <= 2
    assert any(c == promo_cat for c in cats)
    for r, c in zip(res.items, cats):
        p = r.ranking_score
        cal = rerank.calibrate([p], temperature=2.0, bias=0.1)[0]
        assert r.reasons["calibrated_score"] == pytest.approx(cal)
        boosted = cal * 1.5 + 0.01 if c == promo_cat else cal
        assert ("boosts" in r.reasons) == (c == promo_cat)
        if c == promo_cat:
            assert r.reasons["boosts"]["promo"] == pytest.approx(boosted - cal)
        age = items.loc[r.item_id, "freshness"]
        final = boosted * (1 + 0.3 * 0.5 ** (age / 50.0))
        assert r.final_score == pytest.approx(final)
        assert r.reasons["freshness_boost"] == pytest.approx(final - boosted)
    # diversity 0 under caps: the best-scored items, in order, skipping full categories
    finals = [r.final_score for r in res.items]
    assert finals == sorted(finals, reverse=True)


def test_blend_weight_mixes_retrieval_scores(server, tables, users):
    u, ctx = users(1)
    with Recommender(server, tables) as rec:
        res = rec.recommend(u, k=30, context=ctx, n_candidates=30, blend_weight=0.3)
    r = np.array([x.retrieval_score for x in res.items])
    p = np.array([x.ranking_score for x in res.items])
    # all 30 candidates come back, so min-max runs over exactly these
    expect = rerank.blend(r, p, weight=0.3)
    np.testing.assert_allclose([x.final_score for x in res.items], expect)
    np.testing.assert_allclose([x.reasons["blended_score"] for x in res.items], expect)


def test_full_diversity_by_category_spreads_categories(server, tables, users):
    u, ctx = users(2)
    with Recommender(server, tables, options=ClientOptions(diversity_by="category")) as rec:
        res = rec.recommend(u, k=8, context=ctx, n_candidates=40, diversity=1.0)
        pool = rec.recommend(u, k=40, context=ctx, n_candidates=40)
    n_cats = len({r.category for r in pool.items})
    first = [r.category for r in res.items[:n_cats]]
    assert len(set(first)) == len(first)  # a new category as long as one is left
    assert res.items[0].item_id == pool.items[0].item_id  # the first pick is the most relevant
    assert all(r.reasons["mmr_penalty"] == 0 for r in res.items[:n_cats])
    assert all(r.reasons["mmr_penalty"] == 1 for r in res.items[n_cats:])


def test_exploration_is_seeded(server, tables, users):
    u, ctx = users(0)
    with Recommender(server, tables) as rec:
        a = rec.recommend(u, k=8, context=ctx, n_candidates=40, explore=0.05, seed=3)
        b = rec.recommend(u, k=8, context=ctx, n_candidates=40, explore=0.05, seed=3)
        others = [rec.recommend(u, k=8, context=ctx, n_candidates=40, explore=0.05, seed=s)
                  for s in (4, 5, 6)]
        greedy = rec.recommend(u, k=8, context=ctx, n_candidates=40)
    ids = lambda res: [r.item_id for r in res.items]  # noqa: E731
    assert ids(a) == ids(b)
    assert any(ids(o) != ids(a) for o in others)
    assert all(r.reasons["explored"] for r in a.items)
    keys = [r.reasons["sampling_key"] for r in a.items]
    assert keys == sorted(keys, reverse=True)  # drawn in Gumbel-key order
    assert "explored" not in greedy.items[0].reasons


def test_request_not_fitting_the_signature_fails_before_it_is_sent(server, tables, users):
    u, ctx = users(0)

    class BadFreshness(InMemoryItemStore):
        def get(self, item_ids):
            out = super().get(item_ids)
            out["freshness"] = np.array(["not a number"] * len(item_ids), dtype=object)
            return out

    key = "item_id"
    store = BadFreshness.from_dir(tables, key)
    counting = Counting(server)
    rec = Recommender(server, tables, item_store=store, client=counting)
    res = rec.recommend(u, k=5, context=ctx)
    assert res.degraded == "ranker failed (INVALID_REQUEST): retrieval order"
    assert "'freshness'" in res.failures["ranking"] and "deepfm" in res.failures["ranking"]
    assert counting.predicts == ["two_tower"]  # the ranker's request never left the client
    assert len(res.items) == 5 and all(r.ranking_score is None for r in res.items)

    rec = Recommender(server, tables, item_store=store, client=counting,
                      options=ClientOptions(raise_errors=True))
    with pytest.raises(RequestError) as err:
        rec.recommend(u, k=5, context=ctx)
    assert err.value.field == "freshness" and err.value.model == "deepfm"
    # a context value of the wrong shape, named
    with pytest.raises(RequestError, match="input 'hour'"):
        rec.recommend(u, k=5, context=dict(ctx, hour=["20", "21"]))
    assert counting.predicts.count("deepfm") == 0
    # strict: a signature input the client has no value for is an error, not an unknown
    strict = Recommender(server, tables, client=counting,
                         options=ClientOptions(strict=True, raise_errors=True))
    with pytest.raises(RequestError, match="no value for this input"):
        strict.recommend("user-never-seen", k=3)


def test_signature_read_once_and_cached(server, tables, users):
    u, ctx = users(0)
    counting = Counting(server)
    with Recommender(server, tables, client=counting) as rec:
        for _ in range(3):
            rec.recommend(u, k=3, context=ctx, n_candidates=10)
    assert [m for m, _ in counting.signature_calls] == ["two_tower", "deepfm"]
    assert counting.predicts == ["two_tower", "deepfm"] * 3
    counting = Counting(server)
    with Recommender(server, tables, client=counting, options=ClientOptions(metadata_ttl=0)) as rec:
        for _ in range(2):
            rec.recommend(u, k=3, context=ctx, n_candidates=10)
    assert counting.signature_calls == [("two_tower", False), ("deepfm", False),
                                        ("two_tower", True), ("deepfm", True)]


def test_user_inputs_converted_once_per_call_and_shared_by_both_requests(server, tables,
                                                                        users):
    """The retrieval request and the ranker's one_user request carry the user's row: it is
    converted once per recommend call (the same arrays go into both), with the values a
    Recommender that converts for each request sends; the next call converts afresh."""
    u, ctx = users(0)

    class Recording(Counting):
        def __init__(self, target):
            super().__init__(target)
            self.inputs = []

        def predict(self, model, inputs, **kwargs):
            self.inputs.append((model, dict(inputs)))
            return super().predict(model, inputs, **kwargs)

    rec_client = Recording(server)
    with Recommender(server, tables, client=rec_client) as rec:
        rec.recommend(u, k=3, context=ctx, n_candidates=10)
        rec.recommend(u, k=3, context=ctx, n_candidates=10)
    (m1, retrieval), (m2, ranking), (_, retrieval_again), _ = rec_client.inputs
    assert (m1, m2) == ("two_tower", "deepfm")
    shared = sorted(set(retrieval) & set(ranking))
    assert {"user_id", "history", "hour"} <= set(shared)
    for name in shared:
        assert ranking[name] is retrieval[name], name          # converted once
        assert ranking[name].shape[0] == 1                      # one_user: one row
        assert retrieval_again[name] is not retrieval[name]     # a new call converts afresh
        np.testing.assert_array_equal(retrieval_again[name], retrieval[name])
    # the values are what building each request on its own gives
    with Recommender(server, tables) as rec:
        for model, sent in (("two_tower", retrieval), ("deepfm", ranking)):
            sig = rec.client.signature(model, "one_user" if model == "deepfm"
                                       else "serving_default")
            user = rec.users.get(u)
            user.update(ctx)
            alone, _ = rec.requests.build(model, sig, user, 1, skip=("k",))
            for name in shared:
                np.testing.assert_array_equal(alone[name], sent[name])


def test_recommend_many_and_asyncio_match_one_by_one(server, tables, tiny_synthetic, context):
    ds = tiny_synthetic
    users = ds.test.user_id.drop_duplicates().head(6).tolist()
    ctxs = [context(u) for u in users]
    with Recommender(server, tables, options=ClientOptions(max_workers=3)) as rec:
        one = [rec.recommend(u, k=5, context=c, diversity=0.2) for u, c in zip(users, ctxs)]
        many = rec.recommend_many(users, ctxs, k=5, diversity=0.2)

        async def run():
            return await asyncio.gather(*(rec.arecommend(u, k=5, context=c, diversity=0.2)
                                          for u, c in zip(users, ctxs)))

        both = asyncio.run(run())
    ids = lambda rs: [[r.item_id for r in res.items] for res in rs]  # noqa: E731
    assert ids(many) == ids(one) == ids(both)
    assert [r.user_id for r in many] == users


def test_one_channel_per_target_shared_across_recommenders(server, tables):
    a = Recommender(server, tables)
    b = Recommender(server, tables, ranker=None)
    assert a.client is b.client and CHANNELS.open_targets()[server] >= 2
    res = b.recommend("u1", k=4)  # ranker=None: retrieval order, not degraded
    assert res.degraded is None and all(r.ranking_score is None for r in res.items)
    a.close()
    b.close()
    b.close()  # idempotent
    assert server not in CHANNELS.open_targets()


def test_debug_logs_requests(server, tables, users, caplog):
    u, ctx = users(0)
    with caplog.at_level(logging.INFO, logger="recsys_tf.client"):
        with Recommender(server, tables, options=ClientOptions(debug=True)) as rec:
            rec.recommend(u, k=3, context=ctx, n_candidates=10)
    text = caplog.text
    assert "Predict two_tower" in text and "Predict deepfm" in text
    # the ranker's request: the user's row once (its one_user signature), the items' rows
    assert "signature=one_user" in text and "item_id:string[10]" in text
    assert "history:string[1, 20]" in text and "k:int32[]=" in text
    assert "timings ms" in text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="recsys_tf.client"):
        with Recommender(server, tables) as rec:
            rec.recommend(u, k=3, context=ctx, n_candidates=10)
    assert "Predict" not in caplog.text


def test_query_embedding_signature_searched_locally(server, tables, users):
    """A retrieval signature that returns only the query embedding: the client searches the
    exported item embeddings itself, and finds what the served brute-force index finds."""
    u, ctx = users(0)
    # (the first call of a signature the warm-up did not cover builds its graph on the
    # server, which took over the default 2 s on a loaded 2-core machine)
    with Recommender(server, tables, ranker=None) as served, \
            Recommender(server, tables, ranker=None,
                        options=ClientOptions(retrieval_signature="query_embedding")) as local:
        a = served.recommend(u, k=10, context=ctx, n_candidates=10)
        b = local.recommend(u, k=10, context=ctx, n_candidates=10)
    assert a.degraded is None and b.degraded is None
    # the same list up to ties: two float32 dot products (TensorFlow's, numpy's) may swap, or
    # replace at the k-th place, only items whose scores tie within rounding
    listed_a = [r.retrieval_score for r in a.items]
    np.testing.assert_allclose([r.retrieval_score for r in b.items], listed_a, rtol=1e-5)
    score_a = {r.item_id: r.retrieval_score for r in a.items}
    score_b = {r.item_id: r.retrieval_score for r in b.items}
    for item in score_a.keys() & score_b.keys():
        assert score_b[item] == pytest.approx(score_a[item], rel=1e-5)
    for item in score_a.keys() ^ score_b.keys():
        assert {**score_a, **score_b}[item] == pytest.approx(listed_a[-1], rel=1e-5)


def test_pinned_ranker_versions(server, tables, users):
    u, ctx = users(0)
    with Recommender(server, tables, options=ClientOptions(ranker_version=1)) as rec:
        res = rec.recommend(u, k=3, context=ctx)
    assert res.degraded is None and res.models["ranker"]["version"] == 1
    with Recommender(server, tables, options=ClientOptions(ranker_version=7)) as rec:
        res = rec.recommend(u, k=3, context=ctx)
    assert res.degraded == "ranker failed (NOT_FOUND): retrieval order"
    with Recommender(server, tables, options=ClientOptions(ranker_label="canary")) as rec:
        res = rec.recommend(u, k=3, context=ctx)
    assert res.degraded == "ranker failed (INVALID_ARGUMENT): retrieval order"
    assert "canary" in res.failures["ranking"]


def test_in_memory_item_store_unknown_ids_and_popularity():
    rows = [{"id": "a", "cat": "x", "age": 1.5, "popularity": 3},
            {"id": "b", "cat": "y", "age": None, "popularity": 9},
            {"id": "c", "cat": "x", "age": 4.0, "popularity": 5}]
    store = InMemoryItemStore(rows, "id", embeddings=np.eye(3))
    got = store.get(["c", "zz", "a"])
    assert got["cat"].tolist() == ["x", None, "x"]
    np.testing.assert_array_equal(got["age"], [4.0, np.nan, 1.5])
    assert got["popularity"].tolist() == [5, None, 3]
    np.testing.assert_array_equal(store.vectors(["b", "zz"]), [[0, 1, 0], [0, 0, 0]])
    scaled = InMemoryItemStore(rows, "id", embeddings=[[3, 4], [0, 0], [0, 2]])
    np.testing.assert_array_equal(scaled.unit_vectors(["a", "zz", "c", "b"]),
                                  [[0.6, 0.8], [0, 0], [0, 1], [0, 0]])
    assert InMemoryItemStore(rows, "id").unit_vectors(["a"]) is None
    assert store.popular(2) == ["b", "c"] and store.popular(5, exclude={"c"}) == ["b", "a"]
    assert store.normalise_many(np.array([b"a", b"c"], dtype=object)) == ["a", "c"]
    # known ids come back as the table's own objects; unknown ones decoded all the same
    named = InMemoryItemStore([{"id": "item-1"}, {"id": "item-22"}], "id")
    got = named.normalise_many(np.array([b"item-22", b"item-new", "item-1"], dtype=object))
    assert got == ["item-22", "item-new", "item-1"] and got[0] is named.ids[1]
    assert store.size == 3
    # what a request sends: the string columns and the ids as bytes, "" when unknown or None
    wire = store.wire(["c", "zz", "a"])
    assert sorted(wire) == ["cat", "id"]                     # no numeric columns
    assert wire["cat"].tolist() == [b"x", b"", b"x"] and wire["id"].tolist() == [b"c", b"", b"a"]
    ints = InMemoryItemStore([{"id": 7}, {"id": 9}], "id")
    assert ints.wire([7]) == {}
    assert ints.normalise_many(np.array([9, 7])) == [9, 7]
    assert ints.normalise(b"7") == 7
    with pytest.raises(ValueError, match="duplicate"):
        InMemoryItemStore(rows + rows[:1], "id")


class HashedId(str):
    """An item id that notes every time it is hashed: once per dictionary lookup of it."""

    hashed = []

    def __hash__(self):
        HashedId.hashed.append(str(self))
        return str.__hash__(self)


def test_item_store_looks_a_tuple_of_candidates_up_once_per_thread():
    import threading

    rows = [{"id": HashedId(i), "cat": c} for i, c in zip("abcd", "xyxz")]
    store = InMemoryItemStore(rows, "id", embeddings=np.arange(8.0).reshape(4, 2))
    lookups = HashedId.hashed
    lookups.clear()
    ids = tuple(map(HashedId, "cad"))
    first = store.positions(ids)
    assert first.tolist() == [2, 0, 3] and not first.flags.writeable
    # the three calls of one request: one lookup per id in all
    assert store.get(ids)["cat"].tolist() == ["x", "x", "z"]
    assert store.wire(ids)["id"].tolist() == [b"c", b"a", b"d"]
    np.testing.assert_array_equal(store.vectors(ids), [[4, 5], [0, 1], [6, 7]])
    assert lookups == ["c", "a", "d"]
    # an equal but other tuple, and lists (which can change in place), are looked up again
    other = tuple(map(HashedId, "cad"))
    again = store.positions(other)
    assert again.tolist() == [2, 0, 3] and again is not first
    names = [HashedId("b"), HashedId("a")]
    assert store.positions(names).tolist() == [1, 0]
    names[0] = HashedId("d")
    assert store.positions(names).tolist() == [3, 0]
    assert len(lookups) == 3 + 3 + 2 + 2
    # a list does not replace the thread's last tuple; another thread keeps its own
    seen = []
    worker = threading.Thread(target=lambda: seen.append(store.positions(("b",)).tolist()))
    worker.start()
    worker.join()
    assert seen == [[1]] and store.positions(other) is again
    # the memo does not stop the store from being pickled or copied
    import copy
    import pickle

    for clone in (pickle.loads(pickle.dumps(store)), copy.deepcopy(store)):
        assert clone.positions(ids).tolist() == [2, 0, 3]
        assert clone.get(["d"])["cat"].tolist() == ["z"]


def test_item_store_gives_the_rows_of_retrieved_ids_with_them():
    """Ids as Predict returns them (bytes) -> the table's own id objects and their rows in one
    dictionary pass; remembered for the tuple the pipeline builds, no second lookup."""
    rows = [{"id": HashedId(i), "cat": c} for i, c in zip(["i1", "i22", "i3"], "xyz")]
    store = InMemoryItemStore(rows, "id")
    lookups = HashedId.hashed
    lookups.clear()
    answer = np.array([b"i3", b"i1", b"i22"], dtype=object)
    ids, where = store.ids_and_rows(answer)
    assert ids == ["i3", "i1", "i22"] and where.tolist() == [2, 0, 1]
    assert all(a is b for a, b in zip(ids, [store.ids[2], store.ids[0], store.ids[1]]))
    assert store.normalise_many(answer) == ids
    assert store.ids_and_rows(np.array([b"i3", b"nope"], dtype=object)) is None  # unknown id
    assert store.normalise_many(np.array([b"i3", b"nope"], dtype=object)) == ["i3", "nope"]
    assert store.ids_and_rows(np.array([1, 2])) is None
    kept = tuple(ids[:2])
    store.remember(kept, where[:2])
    lookups.clear()
    assert store.get(kept)["cat"].tolist() == ["z", "x"]
    assert store.wire(kept)["id"].tolist() == [b"i3", b"i1"]
    assert lookups == []    # no id of the remembered tuple was looked up again


def test_scann_retrieval_model(server, trained, users):
    """two_tower_scann (ScaNN ops inside the SavedModel) through the same client; its model
    card's index_k caps what the client asks for."""
    scann_path = trained["two_tower"][0].get("scann_export_path")
    if not scann_path:
        pytest.skip("ScaNN is not installed: no two_tower_scann export")
    scann_tables = os.path.join(scann_path, "assets.extra")
    u, ctx = users(0)
    with Recommender(server, scann_tables, retrieval_model="two_tower_scann",
                     ranker=None) as rec, \
            Recommender(server, scann_tables, ranker=None) as exact:
        assert rec.max_retrieval_k == 50  # min(n_items, 1000) in the tiny export
        a = rec.recommend(u, k=10, context=ctx, n_candidates=10)
        b = exact.recommend(u, k=10, context=ctx, n_candidates=10)
    assert a.degraded is None and a.models["retrieval"]["name"] == "two_tower_scann"
    overlap = len({r.item_id for r in a.items} & {r.item_id for r in b.items})
    assert overlap >= 8  # tuned for recall@10 >= 0.95 against exact search
    with Recommender(server, scann_tables, retrieval_model="two_tower_scann", ranker=None,
                     options=ClientOptions(max_retrieval_k=12)) as rec:
        res = rec.recommend(u, k=10, context=ctx, n_candidates=40)
    assert res.degraded is None and max(r.reasons["retrieval_rank"] for r in res.items) <= 12


# ---------------------------------------------------------------------------------------------
# which version answered: ServingClient.predict(with_version=True), version labels

import shutil  # noqa: E402

import grpc  # noqa: E402


LABELLED_CONFIG = """
model_config_list {
  config { name: "two_tower" base_path: "two_tower" model_platform: "tensorflow" }
  config {
    name: "deepfm"
    base_path: "deepfm"
    model_platform: "tensorflow"
    model_version_policy { all {} }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
}
"""


@pytest.fixture(scope="module")
def labelled_server(trained, tmp_path_factory):
    """A bundled server (from a model config) serving the session's DeepFM export as versions
    1 and 2, labelled "stable" and "canary", next to the session's two-tower."""
    from recsys_tf.server.server import ModelServer

    root = tmp_path_factory.mktemp("labelled_models")
    shutil.copytree(os.path.join(trained["root"], "two_tower", "1"), root / "two_tower" / "1")
    for version in ("1", "2"):
        shutil.copytree(os.path.join(trained["root"], "deepfm", "1"), root / "deepfm" / version)
    (root / "models.config").write_text(LABELLED_CONFIG)
    srv = ModelServer(model_config_file=str(root / "models.config"), host="127.0.0.1", port=0)
    port = srv.start()
    yield f"127.0.0.1:{port}"
    srv.stop()


def _unknown_rows(model, sig, rows=2):
    """A request for ``sig`` with every input unknown ("" / 0 / NaN), built as the client
    builds one for a user it knows nothing of."""
    inputs, missing = RequestBuilder().build(model, sig, {}, rows)
    assert sorted(missing) == sorted(sig["inputs"])
    return inputs


def test_predict_with_version_reports_the_version_that_answered(server):
    with ServingClient(server) as client:
        sig = client.signature("deepfm")
        x = _unknown_rows("deepfm", sig)
        plain = client.predict("deepfm", x)
        out, version = client.predict("deepfm", x, with_version=True)
        pinned, pinned_version = client.predict("deepfm", x, version=1, with_version=True)
    assert isinstance(plain, dict)  # the default return is unchanged
    assert version == pinned_version == sig["version"] == 1
    assert set(out) == set(plain) == set(pinned)
    for name in plain:
        np.testing.assert_array_equal(out[name], plain[name])
        np.testing.assert_array_equal(pinned[name], plain[name])


def test_string_outputs_come_back_in_string_val(server, trained, tiny_synthetic):
    """As TF Serving answers by default (AsProtoField): a string output's values are in
    ``string_val`` (the server's in-graph ``SerializeTensor`` writes strings there), not
    TensorFlow's packed ``tensor_content``; they equal the model's own."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from recsys_tf.wire import codec

    fs = tiny_synthetic.feature_set
    x = fs.arrays(tiny_synthetic.retrieval_test.head(2), trained["two_tower"][1].query_features)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "two_tower"
    for name, value in dict(x, k=np.array(7, np.int32)).items():
        codec.to_tensor_proto(value, out=request.inputs[name])
    with grpc.insecure_channel(server) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        ids = stub.Predict(request, timeout=30).outputs["item_ids"]
    assert not ids.tensor_content and len(ids.string_val) == 14
    assert [d.size for d in ids.tensor_shape.dim] == [2, 7]
    loaded = tf.saved_model.load(trained["two_tower"][0]["export_path"])
    want = loaded.signatures["serving_default"](
        **{k: tf.constant(v) for k, v in x.items()}, k=tf.constant(7))["item_ids"].numpy()
    np.testing.assert_array_equal(tf.make_ndarray(ids), want)

def test_signature_and_metadata_by_version_label(labelled_server, server):
    with ServingClient(labelled_server) as client:
        assert client.signature("deepfm")["version"] == 2  # no version asked: the latest
        assert client.signature("deepfm", label="stable")["version"] == 1
        assert client.signature("deepfm", label="canary")["version"] == 2
        assert client.signature("deepfm", version=1)["version"] == 1
        meta = client.metadata("deepfm", label="stable")
        assert meta["serving_default"]["version"] == 1
        assert meta["serving_default"]["inputs"] == client.signature("deepfm")["inputs"]
        assert {s["version"] for s in client.metadata("deepfm", label="canary").values()} == {2}
        x = _unknown_rows("deepfm", meta["serving_default"])
        for label, want in (("stable", 1), ("canary", 2), (None, 2)):
            _, version = client.predict("deepfm", x, label=label, with_version=True)
            assert version == want, label
        with pytest.raises(ValueError, match="not both"):
            client.signature("deepfm", version=1, label="stable")
        with pytest.raises(grpc.RpcError) as err:
            client.metadata("deepfm", label="beta")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "beta" in err.value.details()
    with ServingClient(server) as client:  # the session server has no labels
        with pytest.raises(grpc.RpcError) as err:
            client.signature("deepfm", label="stable")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


class NoVersion:
    """A ServingClient stand-in whose predict takes no ``with_version`` (as older stand-ins)."""

    def __init__(self, target):
        self.real = ServingClient(target)

    def signature(self, *args, **kwargs):
        return self.real.signature(*args, **kwargs)

    def predict(self, model, inputs, signature="serving_default", version=None, label=None,
                output_filter=None, timeout=None):
        return self.real.predict(model, inputs, signature=signature, version=version,
                                 label=label, output_filter=output_filter, timeout=timeout)


def test_result_records_the_ranker_version_that_answered(labelled_server, tables,
                                                          users):
    u, ctx = users(0)
    scores = {}
    for label, version in (("stable", 1), ("canary", 2)):
        with Recommender(labelled_server, tables, options=ClientOptions(ranker_label=label)) as rec:
            res = rec.recommend(u, k=4, context=ctx, n_candidates=10)
        assert res.degraded is None, res.degraded
        assert res.models["ranker"] == {"name": "deepfm", "version": version, "label": label,
                                        "signature": "one_user"}
        scores[label] = [(r.item_id, r.ranking_score) for r in res.items]
    assert scores["stable"] == scores["canary"]  # the same export under two versions
    with Recommender(labelled_server, tables) as rec:
        res = rec.recommend(u, k=4, context=ctx, n_candidates=10)
    assert res.models == {"retrieval": {"name": "two_tower", "version": 1},
                          "ranker": {"name": "deepfm", "version": 2, "signature": "one_user"}}
    # a client that cannot say which version answered: the version comes from the signature
    # (and stays unknown for a label), as before
    stand_in = NoVersion(labelled_server)
    try:
        res = Recommender(labelled_server, tables, client=stand_in).recommend(
            u, k=4, context=ctx, n_candidates=10)
        assert res.degraded is None and res.models["ranker"]["version"] == 2
        res = Recommender(labelled_server, tables, client=stand_in,
                          options=ClientOptions(ranker_label="stable")
                          ).recommend(u, k=4, context=ctx, n_candidates=10)
        assert res.degraded is None
        assert res.models["ranker"] == {"name": "deepfm", "version": None, "label": "stable",
                                        "signature": "one_user"}
    finally:
        stand_in.real.close()


def test_a_custom_item_store_gets_lists_and_its_wire_columns_are_converted(server, tables,
                                                                            users):
    """A feature store of one's own (the ItemStore interface) sees lists of ids, and a
    ``wire`` that returns plain lists of str still makes the same ranker request."""
    from recsys_tf.client import ItemStore

    u, ctx = users(0)
    inner = InMemoryItemStore.from_dir(tables, "item_id")
    seen_types = set()

    class Delegating(ItemStore):
        key, size = inner.key, inner.size
        embeddings, ids = inner.embeddings, inner.ids

        def get(self, item_ids):
            seen_types.add(type(item_ids))
            return inner.get(item_ids)

        def vectors(self, item_ids):
            seen_types.add(type(item_ids))
            return inner.vectors(item_ids)

        def wire(self, item_ids):
            seen_types.add(type(item_ids))
            return {c: [b.decode() for b in v] for c, v in inner.wire(item_ids).items()}

        def popular(self, n, exclude=()):
            return inner.popular(n, exclude)

        def normalise_many(self, item_ids):
            return inner.normalise_many(item_ids)

    kw = dict(k=5, context=ctx, diversity=0.3)
    with Recommender(server, tables, item_store=Delegating()) as custom, \
            Recommender(server, tables) as builtin:
        got, want = custom.recommend(u, **kw), builtin.recommend(u, **kw)
    assert got.degraded is None and seen_types == {list}
    assert [r.item_id for r in got.items] == [r.item_id for r in want.items]
    np.testing.assert_allclose([r.ranking_score for r in got.items],
                               [r.ranking_score for r in want.items], rtol=1e-6)
