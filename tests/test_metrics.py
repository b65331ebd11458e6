"""Tests for recsys_tf.metrics: hand-computed values on tiny inputs, brute-force cross-checks."""
import doctest
import math
import subprocess
import sys

import numpy as np
import pytest

from recsys_tf import metrics
from recsys_tf.metrics import (
    auc,
    coverage,
    diversity,
    gauc,
    hit_rate_at_k,
    logloss,
    mrr,
    ndcg_at_k,
    recall_at_k,
)


# --------------------------------------------------------------------------- references


def brute_auc(labels, scores):
    """O(n^2) pairwise AUC: a positive beating a negative counts 1, a tie 1/2."""
    pos = [s for y, s in zip(labels, scores) if y == 1]
    neg = [s for y, s in zip(labels, scores) if y == 0]
    credit = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return credit / (len(pos) * len(neg))


def loop_gauc(users, labels, scores):
    num = den = 0.0
    for u in set(users):
        idx = [i for i, v in enumerate(users) if v == u]
        y = [labels[i] for i in idx]
        if 0 < sum(y) < len(y):
            num += len(idx) * brute_auc(y, [scores[i] for i in idx])
            den += len(idx)
    return num / den


def loop_topk(ranked, relevant, k):
    """Per-query recall, hit, ndcg, rr with plain Python loops (queries with rel skipped)."""
    rec, hit, ndcg, rr = [], [], [], []
    for row, rel in zip(ranked, relevant):
        rel = set(rel)
        if not rel:
            continue
        top, seen = [], set()
        for x in row[:k]:
            top.append(x in rel and x not in seen)
            seen.add(x)
        rec.append(sum(top) / len(rel))
        hit.append(float(any(top)))
        dcg = sum(h / math.log2(i + 2) for i, h in enumerate(top))
        idcg = sum(1 / math.log2(i + 2) for i in range(min(len(rel), k)))
        ndcg.append(dcg / idcg)
        first = next((i for i, h in enumerate(top) if h), None)
        rr.append(0.0 if first is None else 1.0 / (first + 1))
    return tuple(float(np.mean(v)) for v in (rec, hit, ndcg, rr))


# --------------------------------------------------------------------------- module hygiene


def test_docstring_examples():
    result = doctest.testmod(metrics)
    assert result.attempted > 10
    assert result.failed == 0


def test_does_not_import_tensorflow():
    code = "import sys, recsys_tf.metrics; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_all_return_python_floats():
    assert type(auc([0, 1], [0.1, 0.2])) is float
    assert type(logloss([0, 1], [0.1, 0.2])) is float
    assert type(gauc([1, 1], [0, 1], [0.1, 0.2])) is float
    assert type(recall_at_k([[1]], [1], 1)) is float
    assert type(coverage([[1]], 2)) is float
    assert type(diversity([[0, 1]], categories=[0, 1])) is float


# --------------------------------------------------------------------------- AUC


def test_auc_hand_values():
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: 0.35 loses to 0.4 -> 3 of 4 pairs.
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # Perfectly separated / perfectly inverted.
    assert auc([0, 1, 0, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(1.0)
    assert auc([1, 0, 1, 0], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.0)


def test_auc_ties_get_half_credit():
    assert auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert auc([0, 0, 1, 1], [0.3, 0.3, 0.3, 0.3]) == pytest.approx(0.5)
    # pairs: (pos 0.5 vs neg 0.5) tie = 0.5, (pos 0.9 vs neg 0.5) = 1 -> 0.75
    assert auc([0, 1, 1], [0.5, 0.5, 0.9]) == pytest.approx(0.75)


def test_auc_accepts_bool_labels_and_any_scale():
    assert auc(np.array([False, True]), np.array([-3.0, 7.0])) == 1.0
    assert auc([0, 1, 0, 1], [1, 4, 3, 8]) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_bruteforce_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 300
    y = rng.integers(0, 2, n)
    s = np.round(rng.normal(size=n) + 0.7 * y, 1)  # rounding makes many ties
    assert auc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)


def test_auc_invariant_to_monotone_transform():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 200)
    s = rng.normal(size=200)
    assert auc(y, s) == pytest.approx(auc(y, 1 / (1 + np.exp(-3 * s))))


def test_auc_single_class_raises():
    with pytest.raises(ValueError, match="only class 1"):
        auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="only class 0"):
        auc([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="empty"):
        auc([], [])


def test_auc_length_mismatch_names_both_lengths():
    with pytest.raises(ValueError, match="labels has 4 elements but scores has 3"):
        auc([0, 1, 0, 1], [0.1, 0.2, 0.3])


def test_auc_bad_labels_and_scores():
    with pytest.raises(ValueError, match=r"labels must be 0 or 1, got \[2.0\]"):
        auc([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="scores must be finite"):
        auc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="1-D"):
        auc([[0, 1]], [[0.1, 0.2]])


# --------------------------------------------------------------------------- logloss


def test_logloss_hand_values():
    assert logloss([1, 0], [0.5, 0.5]) == pytest.approx(math.log(2))
    # -(log 0.8 + log(1 - 0.4)) / 2
    expected = -(math.log(0.8) + math.log(0.6)) / 2
    assert logloss([1, 0], [0.8, 0.4]) == pytest.approx(expected)


def test_logloss_clips_confident_mistakes():
    assert logloss([1], [0.0]) == pytest.approx(-math.log(1e-7))
    assert logloss([0], [1.0], eps=1e-3) == pytest.approx(-math.log(1e-3))
    assert logloss([1, 0], [1.0, 0.0]) == pytest.approx(-math.log(1 - 1e-7))


def test_logloss_soft_labels():
    # y = 0.3, p = 0.3: entropy of Bernoulli(0.3)
    h = -(0.3 * math.log(0.3) + 0.7 * math.log(0.7))
    assert logloss([0.3], [0.3]) == pytest.approx(h)


def test_logloss_errors():
    with pytest.raises(ValueError, match="probs must be probabilities in \\[0, 1\\]"):
        logloss([1, 0], [2.5, -1.0])
    with pytest.raises(ValueError, match="labels has 2 elements but probs has 1"):
        logloss([1, 0], [0.5])
    with pytest.raises(ValueError, match="eps must be in"):
        logloss([1], [0.5], eps=0.0)
    with pytest.raises(ValueError, match="labels must be in \\[0, 1\\]"):
        logloss([2], [0.5])


# --------------------------------------------------------------------------- GAUC


def test_gauc_hand_weighting():
    users = ["a", "a", "b", "b", "b", "c"]
    labels = [1, 0, 1, 0, 0, 1]
    scores = [0.9, 0.1, 0.2, 0.5, 0.1, 0.3]
    # a: AUC 1 (2 impressions); b: pos 0.2 beats 0.1, loses to 0.5 -> 0.5 (3 impressions);
    # c: single class, skipped.  (2 * 1 + 3 * 0.5) / 5 = 0.7
    assert gauc(users, labels, scores) == pytest.approx(0.7)


def test_gauc_differs_from_global_auc():
    # Each user perfectly ordered, but user scales differ so the global AUC is lower.
    users = [1, 1, 2, 2]
    labels = [1, 0, 1, 0]
    scores = [0.9, 0.8, 0.3, 0.2]
    assert gauc(users, labels, scores) == pytest.approx(1.0)
    assert auc(labels, scores) == pytest.approx(0.75)


def test_gauc_single_user_equals_auc():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 50)
    s = rng.normal(size=50)
    assert gauc(np.zeros(50, int), y, s) == pytest.approx(auc(y, s))


def test_gauc_ties_within_user():
    # user 7: pos 0.5 ties neg 0.5 -> 0.5; user 8: ties across users must not matter -> 1.0
    users = [7, 7, 8, 8]
    labels = [1, 0, 1, 0]
    scores = [0.5, 0.5, 0.6, 0.5]
    assert gauc(users, labels, scores) == pytest.approx((2 * 0.5 + 2 * 1.0) / 4)


@pytest.mark.parametrize("seed", range(3))
def test_gauc_matches_loop(seed):
    rng = np.random.default_rng(seed)
    n = 400
    users = rng.integers(0, 40, n).tolist()
    labels = rng.integers(0, 2, n).tolist()
    scores = np.round(rng.normal(size=n), 1).tolist()
    assert gauc(users, labels, scores) == pytest.approx(loop_gauc(users, labels, scores))


def test_gauc_errors():
    with pytest.raises(ValueError, match="no user among 2 has both"):
        gauc(["a", "b"], [1, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="user_ids has 3 elements but labels has 2"):
        gauc([1, 2, 3], [1, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="labels has 2 elements but scores has 3"):
        gauc([1, 2], [1, 0], [0.1, 0.2, 0.3])


# --------------------------------------------------------------------------- top-k


def test_recall_hand():
    ranked = [[3, 1, 2], [5, 6, 7]]
    # q0: top2 {3, 1} hits 1 of {1, 9} -> 1/2; q1: top2 {5, 6} misses {7} -> 0
    assert recall_at_k(ranked, [{1, 9}, {7}], k=2) == pytest.approx(0.25)
    assert recall_at_k(ranked, [{1, 9}, {7}], k=3) == pytest.approx((0.5 + 1.0) / 2)


def test_recall_single_relevant_array():
    ranked = np.array([[3, 1, 2], [5, 6, 7], [8, 9, 4]])
    assert recall_at_k(ranked, np.array([1, 7, 8]), k=2) == pytest.approx(2 / 3)


def test_recall_skips_queries_without_relevant():
    ranked = [[1, 2], [3, 4]]
    assert recall_at_k(ranked, [{1}, set()], k=1) == 1.0
    assert recall_at_k(ranked, [[1], []], k=1) == 1.0


def test_recall_counts_duplicate_ids_once():
    assert recall_at_k([[1, 1, 2]], [{1, 5}], k=3) == pytest.approx(0.5)


def test_recall_string_ids_and_mixed_container_types():
    ranked = [["i3", "i1", "i2"], ["i5", "i6", "i7"]]
    assert recall_at_k(ranked, ["i1", ("i5", "i7")], k=2) == pytest.approx((1 + 0.5) / 2)
    assert recall_at_k(ranked, [np.array(["i1"]), ["i7"]], k=3) == pytest.approx(1.0)


def test_hit_rate_hand():
    ranked = [[3, 1, 2], [5, 6, 7]]
    assert hit_rate_at_k(ranked, [1, 7], k=1) == 0.0
    assert hit_rate_at_k(ranked, [1, 7], k=2) == 0.5
    assert hit_rate_at_k(ranked, [{1, 2}, {6, 7}], k=3) == 1.0  # 1 per query, not 2


def test_ndcg_hand():
    # DCG = 1/log2(3) + 1/log2(4); IDCG (2 relevant) = 1 + 1/log2(3)
    dcg = 1 / math.log2(3) + 0.5
    idcg = 1 + 1 / math.log2(3)
    assert ndcg_at_k([[4, 1, 2]], [{1, 2}], k=3) == pytest.approx(dcg / idcg)
    # ideal DCG is over min(|rel|, k): 4 relevant, k=2, both slots hit -> 1
    assert ndcg_at_k([[1, 2, 0]], [{1, 2, 3, 5}], k=2) == pytest.approx(1.0)
    # single relevant at rank 3 -> 1/log2(4) = 0.5
    assert ndcg_at_k([[7, 8, 9]], [9], k=3) == pytest.approx(0.5)
    assert ndcg_at_k([[7, 8, 9]], [9], k=2) == 0.0


def test_mrr_hand():
    ranked = [[3, 1, 2], [5, 6, 7], [8, 9, 4]]
    assert mrr(ranked, [{1}, {5, 7}, {0}]) == pytest.approx((0.5 + 1 + 0) / 3)
    assert mrr(ranked, [{2}, {7}, {4}]) == pytest.approx(1 / 3)
    assert mrr(ranked, [{2}, {7}, {4}], k=2) == 0.0


def test_topk_matches_loops_on_random_data():
    rng = np.random.default_rng(0)
    n, width, k = 3000, 100, 20
    ranked = np.stack([rng.permutation(1000)[:width] for _ in range(n)])
    relevant = [set(rng.choice(1000, size=rng.integers(0, 6), replace=False).tolist())
                for _ in range(n)]
    # make some hits likely
    for q in range(0, n, 3):
        relevant[q].add(int(ranked[q, rng.integers(0, width)]))
    got = (recall_at_k(ranked, relevant, k), hit_rate_at_k(ranked, relevant, k),
           ndcg_at_k(ranked, relevant, k), mrr(ranked, relevant, k))
    want = loop_topk(ranked.tolist(), relevant, k)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_topk_errors():
    with pytest.raises(ValueError, match="ranked_items has 2 queries .* relevant has 3"):
        recall_at_k([[1, 2], [3, 4]], [1, 2, 3], k=1)
    with pytest.raises(ValueError, match="ranked_items has 2 columns but k=5"):
        ndcg_at_k([[1, 2], [3, 4]], [1, 2], k=5)
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        recall_at_k([[1, 2]], [1], k=0)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        recall_at_k([[1, 2]], [1], k=1.5)
    with pytest.raises(ValueError, match="rectangular"):
        recall_at_k([[1, 2], [3]], [1, 2], k=1)
    with pytest.raises(ValueError, match="2-D"):
        recall_at_k([1, 2, 3], [1], k=1)
    with pytest.raises(ValueError, match="no query has any relevant item"):
        mrr([[1, 2]], [set()])
    with pytest.raises(ValueError, match="int64 ids but relevant holds <U"):
        hit_rate_at_k(np.array([[1, 2]]), ["1"], k=1)


# --------------------------------------------------------------------------- coverage, diversity


def test_coverage_hand():
    assert coverage([[1, 2, 3], [2, 3, 4]], n_items=10) == pytest.approx(0.4)
    assert coverage(np.array([[1, 2], [2, 1]]), n_items=4) == pytest.approx(0.5)
    assert coverage([["a"], ["b", "c"], []], n_items=3) == 1.0  # lists may differ in length
    assert coverage([], n_items=3) == 0.0


def test_coverage_errors():
    with pytest.raises(ValueError, match="3 distinct items were recommended but n_items=2"):
        coverage([[1, 2, 3]], n_items=2)
    with pytest.raises(ValueError, match="n_items must be a positive integer, got 0"):
        coverage([[1]], n_items=0)


def test_diversity_categories_hand():
    cats = {0: "a", 1: "a", 2: "b", 3: "c"}
    # list 1: pairs (0,1)=0 (0,2)=1 (1,2)=1 -> 2/3; list 2: (2,3)=1 -> 1; list 3 skipped
    got = diversity([[0, 1, 2], [2, 3], [1]], categories=cats)
    assert got == pytest.approx((2 / 3 + 1) / 2)
    # array indexed by item id
    assert diversity([[0, 1, 2]], categories=np.array(["a", "a", "b"])) == pytest.approx(2 / 3)
    assert diversity([[0, 1]], categories=["x", "x"]) == 0.0


def test_diversity_embeddings_hand():
    emb = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [-1.0, 0.0], [0.0, 0.0]])
    assert diversity([[0, 1]], embeddings=emb) == pytest.approx(1.0)  # orthogonal
    assert diversity([[0, 2]], embeddings=emb) == pytest.approx(0.0)  # same direction
    assert diversity([[0, 3]], embeddings=emb) == pytest.approx(2.0)  # opposite
    assert diversity([[0, 4]], embeddings=emb) == pytest.approx(1.0)  # zero vector: sim 0
    # pairs (0,1)=1, (0,2)=0, (1,2)=1 -> 2/3
    assert diversity([[0, 1, 2]], embeddings=emb) == pytest.approx(2 / 3)
    # dict keyed by string ids
    emb_d = {"u": [1.0, 1.0], "v": [1.0, -1.0]}
    assert diversity([["u", "v"]], embeddings=emb_d) == pytest.approx(1.0)


def test_diversity_errors():
    with pytest.raises(ValueError, match="exactly one of"):
        diversity([[0, 1]])
    with pytest.raises(ValueError, match="exactly one of"):
        diversity([[0, 1]], categories=[0, 1], embeddings=[[1.0], [1.0]])
    with pytest.raises(ValueError, match="item 'z' is missing from categories"):
        diversity([["a", "z"]], categories={"a": 1})
    with pytest.raises(ValueError, match="out of range for embeddings with 2 rows"):
        diversity([[0, 5]], embeddings=np.eye(2))
    with pytest.raises(ValueError, match="no recommended list has two or more items"):
        diversity([[0], []], categories=[1])
