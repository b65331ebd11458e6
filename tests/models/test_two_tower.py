"""TwoTower: towers, masking, loss options, config, and the evaluation protocol vs TFRS."""
import numpy as np
import pytest

from recsys_tf.backend import tf
from recsys_tf.models.two_tower import TwoTower


def _x(ds, model, rows):
    arrays = ds.feature_set.arrays(rows, model.query_features + model.candidate_features)
    return {k: tf.constant(v) for k, v in arrays.items()}


@pytest.fixture(scope="module")
def small(tiny_synthetic):
    model = TwoTower(tiny_synthetic.feature_set, dim=8, hidden=[16])
    model.set_item_frequencies(tiny_synthetic.retrieval_train["item_id"].to_numpy())
    return tiny_synthetic, model


def test_towers_are_unit_norm_and_history_shares_the_item_table(small):
    ds, model = small
    x = _x(ds, model, ds.retrieval_train.head(16))
    q, c = model(x)
    assert q.shape == (16, 8) and c.shape == (16, 8)
    np.testing.assert_allclose(np.linalg.norm(q.numpy(), axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(c.numpy(), axis=1), 1.0, atol=1e-5)
    # histories of item ids / categories use the candidate tower's tables: one copy each
    assert list(model.shared_history) == ["history", "history_category"]
    for table in ("item_id", "category"):
        names = [w.name for w in model.trainable_weights
                 if w.name.split("/")[-1].startswith(f"embedding_{table}:")]
        assert len(names) == 1 and "candidate_tower" in names[0], names


def test_unnormalised_option(tiny_synthetic):
    model = TwoTower(tiny_synthetic.feature_set, dim=8, hidden=[16], normalize=False,
                     temperature=1.0)
    q, _ = model(_x(tiny_synthetic, model, tiny_synthetic.retrieval_train.head(8)))
    assert not np.allclose(np.linalg.norm(q.numpy(), axis=1), 1.0, atol=1e-3)
    assert TwoTower.from_config(model.get_config()).normalize is False


def test_unknown_user_and_empty_history_embed_without_error(small):
    ds, model = small
    rows = ds.retrieval_test.head(1).copy()
    rows = rows.loc[rows.index.repeat(4)].reset_index(drop=True)
    rows["user_id"] = ["nobody", "u-1", "", "u999999"]
    empty = [""] * len(rows["history"].iloc[0])
    rows["history"] = [empty] * 4
    rows["history_category"] = [empty] * 4
    arrays = ds.feature_set.arrays(rows, model.query_features)
    q = model.query_model({k: tf.constant(v) for k, v in arrays.items()}).numpy()
    assert np.isfinite(q).all()
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    # every unknown user shares the OOV row: same features -> same query
    np.testing.assert_allclose(q[0], q[1], atol=1e-6)


def test_empty_history_is_the_masked_mean_of_nothing(small):
    ds, model = small
    emb = model.candidate_tower.embedding
    hist = tf.constant([["", "", ""], [ds.items["item_id"][0], "", ""]])
    from recsys_tf.layers.embedding import masked_mean

    seq = emb.embed_ids("item_id", hist)
    pooled = masked_mean(seq, tf.not_equal(hist, "")).numpy()
    np.testing.assert_allclose(pooled[0], 0.0)
    np.testing.assert_allclose(pooled[1], seq.numpy()[1, 0], atol=1e-7)


@pytest.mark.parametrize("options", [
    {}, {"logq_correction": False}, {"remove_accidental_hits": False},
    {"num_hard_negatives": 4}, {"temperature": 0.2}])
def test_loss_options_give_finite_losses(tiny_synthetic, options):
    model = TwoTower(tiny_synthetic.feature_set, dim=8, hidden=[16], **options)
    model.set_item_frequencies(tiny_synthetic.retrieval_train["item_id"].to_numpy())
    loss = model.compute_loss(_x(tiny_synthetic, model, tiny_synthetic.retrieval_train.head(64)))
    assert np.isfinite(float(loss)) and float(loss) > 0


def test_logq_and_hard_negatives_change_the_loss(small):
    ds, model = small
    x = _x(ds, model, ds.retrieval_train.head(64))
    base = float(model.compute_loss(x))
    model.logq_correction = False
    try:
        assert float(model.compute_loss(x)) != pytest.approx(base, rel=1e-6)
    finally:
        model.logq_correction = True
    hard = TwoTower(ds.feature_set, dim=8, hidden=[16], num_hard_negatives=2)
    hard.set_item_frequencies(ds.retrieval_train["item_id"].to_numpy())
    easy = TwoTower(ds.feature_set, dim=8, hidden=[16])
    hard(x), easy(x)
    easy.set_weights(hard.get_weights())
    easy.set_item_frequencies(ds.retrieval_train["item_id"].to_numpy())
    # fewer negatives in the softmax: a smaller loss on the same scores
    assert float(hard.compute_loss(x)) < float(easy.compute_loss(x))


def test_item_frequencies_set_log_q(small):
    ds, model = small
    log_q = model._log_q.numpy()
    assert np.isclose(np.exp(log_q).sum(), 1.0, atol=1e-4)
    top = ds.retrieval_train["item_id"].value_counts().index[0]
    idx = int(model.candidate_tower.embedding.lookup("item_id", tf.constant([top]))[0])
    assert log_q[idx] == log_q.max()


def test_bad_options_are_clear(tiny_synthetic):
    with pytest.raises(ValueError, match="num_hard_negatives"):
        TwoTower(tiny_synthetic.feature_set, num_hard_negatives=0)
    with pytest.raises(ValueError, match="item id"):
        TwoTower(tiny_synthetic.feature_set, candidate_features=["category"])


def test_config_round_trip(small):
    _, model = small
    clone = TwoTower.from_config(model.get_config())
    assert clone.get_config() == model.get_config()


def test_top_k_accuracy_matches_tfrs_factorized_top_k(trained, tiny_synthetic):
    """The metrics JSON's top-k accuracy is TFRS's FactorizedTopK protocol.

    TFRS scores the positive with ``reduce_sum(q * c)`` and the corpus with a matmul; the two
    differ by float rounding (~1e-7), so when the positive is exactly the k-th item TFRS may
    count it out. Ours ranks one score matrix, so the two agree except on such near-ties.
    """
    import tensorflow_recommenders as tfrs

    from recsys_tf import training

    _, model = trained["two_tower"]
    ds = tiny_synthetic
    ours = training.evaluate_retrieval(model, ds, ks=(5, 10))
    cand = training.item_embeddings(model, ds.feature_set, ds.items)
    rows = ds.retrieval_test
    q = training.query_embeddings(model, ds.feature_set, rows)
    index = {v: i for i, v in enumerate(ds.items["item_id"].tolist())}
    target = np.array([index[v] for v in rows["item_id"].tolist()])
    metric = tfrs.metrics.FactorizedTopK(
        candidates=tfrs.layers.factorized_top_k.BruteForce(k=10).index(tf.constant(cand)),
        ks=(5, 10))
    metric.update_state(tf.constant(q), tf.constant(cand[target]))
    theirs = {m.name: float(m.result()) for m in metric.metrics}
    scores = q @ cand.T
    pos = scores[np.arange(len(target)), target]
    kth = -np.sort(-scores, axis=1)
    for k in (5, 10):
        near_ties = int((np.abs(pos - kth[:, k - 1]) < 1e-4).sum())
        gap = ours[f"top_{k}_accuracy"] - theirs[f"factorized_top_k/top_{k}_categorical_accuracy"]
        assert abs(gap) * len(target) <= near_ties + 1e-3, (k, gap, near_ties)
