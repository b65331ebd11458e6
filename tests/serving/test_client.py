"""The client against a real bundled server on 127.0.0.1: retrieve -> rank -> re-rank."""
import os

import numpy as np
import pytest

from recsys_tf.serving.client import Recommender


@pytest.fixture(scope="module")
def tables(trained):
    return os.path.join(trained["two_tower"][0]["export_path"], "assets.extra")


def _context(ds, user):
    row = ds.test[ds.test.user_id == user].iloc[0]
    return {n: row[n] for n in ds.feature_set.with_role("context")}


def test_recommend_returns_k_distinct_unseen_items(server, tables, tiny_synthetic):
    ds = tiny_synthetic
    users = ds.test.user_id.drop_duplicates().head(3).tolist()
    with Recommender(server, tables, ranker="deepfm") as rec:
        for u in users:
            res = rec.recommend(u, k=10, context=_context(ds, u), n_candidates=30, diversity=0.3)
            assert res.degraded is None, res.degraded
            ids = [r.item_id for r in res.items]
            assert len(ids) == 10 and len(set(ids)) == 10
            seen = set(ds.users.set_index("user_id").loc[u, "seen"])
            assert not seen & set(ids)
            assert set(ids) <= set(ds.items.item_id)
            assert all(0 < r.ranking_score < 1 for r in res.items)
            assert {"retrieval", "ranking", "rerank", "total"} <= set(res.timings_ms)


def test_ranking_scores_equal_the_keras_model(server, tables, trained, tiny_synthetic):
    """What the client sends the ranker (built from metadata) is the right feature row."""
    ds = tiny_synthetic
    _, model = trained["deepfm"]
    u = ds.test.user_id.iloc[0]
    ctx = _context(ds, u)
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


def test_diversity_zero_is_ranking_order(server, tables, tiny_synthetic):
    u = tiny_synthetic.test.user_id.iloc[1]
    with Recommender(server, tables) as rec:
        res = rec.recommend(u, k=8, context=_context(tiny_synthetic, u), diversity=0.0)
    scores = [r.final_score for r in res.items]
    assert scores == sorted(scores, reverse=True)


def test_ranker_down_degrades_to_retrieval_order(server, tables, tiny_synthetic):
    u = tiny_synthetic.test.user_id.iloc[0]
    with Recommender(server, tables, ranker="no_such_ranker") as rec:
        res = rec.recommend(u, k=5, context=_context(tiny_synthetic, u))
    assert res.degraded and "ranker failed (NOT_FOUND)" in res.degraded
    assert len(res.items) == 5 and all(r.ranking_score is None for r in res.items)
    r = [x.retrieval_score for x in res.items]
    assert r == sorted(r, reverse=True)


def test_retrieval_down_degrades_to_popular_items(server, tables, tiny_synthetic):
    u = tiny_synthetic.test.user_id.iloc[0]
    with Recommender(server, tables, retrieval_model="no_such_retrieval") as rec:
        res = rec.recommend(u, k=5, context=_context(tiny_synthetic, u))
    assert res.degraded and "most popular" in res.degraded
    assert len(res.items) == 5
    with Recommender(server, tables, retrieval_model="no_such_retrieval", raise_errors=True) as rec:
        import grpc

        with pytest.raises(grpc.RpcError):
            rec.recommend(u, k=5)


def test_unknown_user_gets_recommendations(server, tables):
    with Recommender(server, tables) as rec:
        res = rec.recommend("user-never-seen", k=5)
    assert len(res.items) == 5 and res.degraded is None
    assert any("sent as unknown" in n for n in res.notes)
