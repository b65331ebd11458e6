"""Tests for recsys_tf.client.rerank: hand-worked cases and reference implementations."""
import doctest
import math
import subprocess
import sys

import numpy as np
import pytest

from recsys_tf.client import rerank
from recsys_tf.client.rerank import (
    blend,
    boost,
    calibrate,
    category_cap,
    explore,
    filter_mask,
    freshness_boost,
    mmr,
    perturb,
    redundancy,
)


def naive_mmr(scores, k, diversity, sim):
    """Textbook MMR with a full similarity matrix (O(n k^2))."""
    s = np.asarray(scores, float)
    rel = (s - s.min()) / (s.max() - s.min())
    chosen = []
    for _ in range(min(k, len(s))):
        best, best_val = None, -np.inf
        for i in range(len(s)):
            if i in chosen:
                continue
            pen = max(sim[i, j] for j in chosen) if chosen else 0.0
            val = (1 - diversity) * rel[i] - diversity * pen
            if val > best_val:
                best, best_val = i, val
        chosen.append(best)
    return chosen


# --------------------------------------------------------------------------- module hygiene


def test_docstring_examples():
    result = doctest.testmod(rerank)
    assert result.attempted > 10
    assert result.failed == 0


def test_imports_nothing_heavy():
    code = (
        "import sys, recsys_tf.client.rerank; "
        "sys.exit('tensorflow' in sys.modules or 'recsys_tf.features' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --------------------------------------------------------------------------- filter_mask


def test_filter_mask_strings_ints_and_iterables():
    assert filter_mask(["a", "b", "c", "b"], {"b"}).tolist() == [True, False, True, False]
    assert filter_mask(np.array([1, 2, 3]), [3, 1]).tolist() == [False, True, False]
    assert filter_mask(np.array([1, 2, 3]), (x for x in [2])).tolist() == [True, False, True]
    assert filter_mask(np.array([1, 2, 3]), np.array([[2, 3]])).tolist() == [True, False, False]
    assert filter_mask(["a", "b"], []).tolist() == [True, True]
    assert filter_mask([], {"a"}).tolist() == []
    assert filter_mask(["a"], {"a"}).dtype == bool


def test_filter_mask_bytes_match_text_and_numpy_ints_match_python_ints():
    assert filter_mask(np.array([b"i1", b"i2"]), {"i2"}).tolist() == [True, False]
    assert filter_mask(["i1", "i2"], [b"i1"]).tolist() == [False, True]
    assert filter_mask(np.array([5, 6], dtype=np.int32), {np.int64(6)}).tolist() == [True, False]
    # an integer id never matches its string spelling
    assert filter_mask([5], {"5"}).tolist() == [True]


def test_filter_mask_errors():
    with pytest.raises(ValueError, match="single string 'abc'"):
        filter_mask(["a", "b"], "abc")
    with pytest.raises(ValueError, match="1-D"):
        filter_mask([["a"]], [])


# --------------------------------------------------------------------------- blend


def test_blend_weight_zero_is_exactly_ranking():
    ranking = np.array([0.123, 0.9, 0.4], dtype=np.float32)
    out = blend([5.0, 1.0, 3.0], ranking)
    np.testing.assert_array_equal(out, ranking.astype(np.float64))
    assert out.dtype == np.float64
    assert out is not ranking


def test_blend_hand_values():
    ret = [10.0, 0.0, 5.0]  # minmax -> 1, 0, 0.5
    rnk = [0.2, 0.6, 0.4]  # minmax -> 0, 1, 0.5
    np.testing.assert_allclose(blend(ret, rnk, weight=1.0), [1.0, 0.0, 0.5])
    np.testing.assert_allclose(blend(ret, rnk, weight=0.25), [0.25, 0.75, 0.5])
    np.testing.assert_allclose(blend(ret, rnk, weight=0.5), [0.5, 0.5, 0.5])


def test_blend_small_weight_keeps_ranking_order():
    rng = np.random.default_rng(3)
    rnk = rng.random(50)
    out = blend(rng.normal(size=50) * 100, rnk, weight=1e-9)
    assert np.argsort(-out).tolist() == np.argsort(-rnk).tolist()


def test_blend_constant_vectors_and_empty():
    np.testing.assert_allclose(blend([1.0, 1.0], [0.3, 0.7], weight=0.5), [0.0, 0.5])
    assert blend([], [], weight=0.5).tolist() == []


def test_blend_errors():
    with pytest.raises(ValueError, match="retrieval_scores has 2 elements but ranking_scores has 3"):
        blend([1, 2], [1, 2, 3], weight=0.5)
    with pytest.raises(ValueError, match="weight must be in \\[0, 1\\], got 1.5"):
        blend([1], [1], weight=1.5)
    with pytest.raises(ValueError, match="ranking_scores must be finite"):
        blend([1, 2], [1, np.inf], weight=0.5)


# --------------------------------------------------------------------------- calibrate


def test_calibrate_hand_values():
    # logit(0.8) = log 4; / 2 = log 2; sigmoid(log 2) = 2/3
    np.testing.assert_allclose(calibrate([0.8], temperature=2.0), [2 / 3])
    # logit(0.5) = 0; + log 3 -> sigmoid = 3/4
    np.testing.assert_allclose(calibrate([0.5], bias=math.log(3)), [0.75])
    # temperature 0.5 sharpens: logit(0.8) * 2 = log 16 -> 16/17
    np.testing.assert_allclose(calibrate([0.8], temperature=0.5), [16 / 17])


def test_calibrate_defaults_are_identity_and_order_is_kept():
    p = np.array([0.01, 0.2, 0.5, 0.77, 0.999])
    np.testing.assert_allclose(calibrate(p), p, rtol=1e-9)
    out = calibrate(p, temperature=3.0, bias=-1.0)
    assert np.all(np.diff(out) > 0)
    # extremes are clipped, not infinite
    ext = calibrate([0.0, 1.0])
    assert np.all(np.isfinite(ext)) and ext[0] > 0 and ext[1] < 1


def test_calibrate_errors():
    with pytest.raises(ValueError, match="temperature must be a positive finite number, got 0"):
        calibrate([0.5], temperature=0)
    with pytest.raises(ValueError, match="p must be probabilities in \\[0, 1\\]"):
        calibrate([0.5, 1.5])
    with pytest.raises(ValueError, match="bias must be finite"):
        calibrate([0.5], bias=np.nan)


# --------------------------------------------------------------------------- boost


def test_boost_multiplicative_and_additive():
    s = np.array([0.5, 0.2, 0.4])
    m = np.array([True, False, True])
    np.testing.assert_allclose(boost(s, m, factor=2.0), [1.0, 0.2, 0.8])
    np.testing.assert_allclose(boost(s, m, add=-0.1), [0.4, 0.2, 0.3])
    np.testing.assert_allclose(boost(s, m, factor=0.5, add=0.1), [0.35, 0.2, 0.3])
    np.testing.assert_array_equal(s, [0.5, 0.2, 0.4])  # input untouched
    # the caller's "reason": the delta per item
    np.testing.assert_allclose(boost(s, m, factor=2.0) - s, [0.5, 0.0, 0.4])


def test_boost_rule_from_comparison():
    cats = np.array(["news", "sport", "news"])
    np.testing.assert_allclose(boost([1.0, 1.0, 1.0], cats == "sport", factor=1.5), [1, 1.5, 1])


def test_boost_errors():
    with pytest.raises(ValueError, match="mask must be a 1-D boolean array, got dtype int64"):
        boost([0.1, 0.2], np.array([0, 1]), factor=2.0)
    with pytest.raises(ValueError, match="scores has 2 elements but mask has 3"):
        boost([0.1, 0.2], [True, False, True], factor=2.0)
    with pytest.raises(ValueError, match="factor must be a finite number >= 0, got -1"):
        boost([0.1], [True], factor=-1)


# --------------------------------------------------------------------------- freshness_boost


def test_freshness_boost_hand_values():
    s = np.array([1.0, 1.0, 1.0, 0.4, 2.0])
    age = np.array([0.0, 24.0, 48.0, 12.0, np.nan])
    out = freshness_boost(s, age, half_life=24.0, strength=0.5)
    # 1 + 0.5 * 2^(-age/24): 1.5, 1.25, 1.125, 1 + 0.5 / sqrt(2); unknown age: no boost
    np.testing.assert_allclose(out, [1.5, 1.25, 1.125, 0.4 * (1 + 0.5 / math.sqrt(2)), 2.0])


def test_freshness_boost_negative_and_infinite_age():
    out = freshness_boost([1.0, 1.0], [-5.0, np.inf], half_life=1.0, strength=1.0)
    np.testing.assert_allclose(out, [2.0, 1.0])


def test_freshness_boost_errors():
    with pytest.raises(ValueError, match="half_life must be a positive finite number, got 0"):
        freshness_boost([1.0], [1.0], half_life=0, strength=1.0)
    with pytest.raises(ValueError, match="strength must be a finite number >= 0"):
        freshness_boost([1.0], [1.0], half_life=1.0, strength=-0.5)
    with pytest.raises(ValueError, match="scores has 1 elements but age has 2"):
        freshness_boost([1.0], [1.0, 2.0], half_life=1.0, strength=1.0)


# --------------------------------------------------------------------------- category_cap


def test_category_cap_hand():
    cats = ["a", "b", "a", "a", "c", "b"]
    order = [3, 0, 1, 2, 5, 4]  # categories along the order: a a b a b c
    assert category_cap(order, cats, cap=1).tolist() == [3, 1, 4]
    assert category_cap(order, cats, cap=2).tolist() == [3, 0, 1, 5, 4]
    assert category_cap(order, cats, cap=3).tolist() == order
    assert category_cap(order, cats, cap=0).tolist() == []
    assert category_cap([], cats, cap=2).tolist() == []


def test_category_cap_mixed_category_types():
    assert category_cap(np.array([0, 1, 2, 3]), [1, "1", None, 1], cap=1).tolist() == [0, 1, 2]


def test_category_cap_errors():
    with pytest.raises(ValueError, match="order holds indices from 0 to 7 but categories has 3"):
        category_cap([0, 7], ["a", "b", "c"], cap=1)
    with pytest.raises(ValueError, match="cap must be a non-negative integer, got -1"):
        category_cap([0], ["a"], cap=-1)
    with pytest.raises(ValueError, match="integer indices"):
        category_cap([0.5], ["a"], cap=1)


def test_category_cap_per_category_mapping_hand():
    cats = ["a", "b", "a", "a", "c", "b"]
    order = [3, 0, 1, 2, 5, 4]  # categories along the order: a a b a b c
    # only "a" capped (at 1): the second and third "a" go, b and c are uncapped
    assert category_cap(order, cats, cap={"a": 1}).tolist() == [3, 1, 5, 4]
    # unlisted categories take the default cap
    assert category_cap(order, cats, cap={"a": 1}, default=0).tolist() == [3]
    assert category_cap(order, cats, cap={"b": 0, "c": 5}, default=2).tolist() == [3, 0, 4]
    with pytest.raises(ValueError, match="cap for category 'a' must be a non-negative integer"):
        category_cap(order, cats, cap={"a": -1})


# --------------------------------------------------------------------------- mmr


def test_mmr_diversity_zero_is_stable_sort():
    rng = np.random.default_rng(0)
    s = np.round(rng.random(200), 1)  # many ties
    for k in (0, 1, 10, 200, 500):
        got = mmr(s, k, diversity=0.0, categories=rng.integers(0, 5, 200))
        assert got.tolist() == np.argsort(-s, kind="stable")[:k].tolist()
        assert got.dtype == np.int64
    assert mmr([0.5, 0.5, 0.9, 0.5], 4).tolist() == [2, 0, 1, 3]


def test_mmr_categories_hand():
    scores = [1.0, 0.9, 0.5, 0.0]  # rel = 1, 0.9, 0.5, 0
    cats = ["a", "a", "b", "b"]
    # d = 0.5. step 1: pick 0 (top). step 2: item1 0.45 - 0.5 = -0.05, item2 0.25 - 0 = 0.25,
    # item3 0 - 0 = 0 -> pick 2. step 3: item1 -0.05, item3 0 - 0.5 -> pick 1. then 3.
    assert mmr(scores, 4, diversity=0.5, categories=cats).tolist() == [0, 2, 1, 3]
    # d = 0.2: step 2: item1 0.72 - 0.2 = 0.52 > item2 0.4 -> relevance still wins.
    assert mmr(scores, 4, diversity=0.2, categories=cats).tolist() == [0, 1, 2, 3]
    # crossover at 0.4 (1 - d) = d, d = 2/7
    assert mmr(scores, 2, diversity=0.29, categories=cats).tolist() == [0, 2]
    assert mmr(scores, 2, diversity=0.28, categories=cats).tolist() == [0, 1]


def test_mmr_embeddings_hand():
    scores = [1.0, 0.8, 0.6, 0.0]  # rel = 1, 0.8, 0.6, 0
    emb = [[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    # d = 0.5, h = 1/sqrt(2). pick 0. max_sim = [1, 1, 0, h]. step 2: item1 -0.1,
    # item2 0.3 - 0 = 0.3, item3 0 - 0.5 h = -0.354 -> pick 2; max_sim -> [1, 1, 1, h].
    # step 3: item1 -0.1 > item3 -0.354 -> pick 1, then 3.
    assert mmr(scores, 4, diversity=0.5, embeddings=emb).tolist() == [0, 2, 1, 3]
    assert mmr(scores, 4, diversity=0.5, embeddings=emb, categories=list("aaaa")).tolist() \
        == [0, 2, 1, 3]  # embeddings take precedence over categories


def test_mmr_keeps_negative_cosine():
    scores = [1.0, 0.8, 0.6, 0.0]
    emb = [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]
    # pick 0; max_sim = [1, 1, 0, -1]. step 2: item1 -0.1, item2 0.3, item3 0 + 0.5 = 0.5
    # -> pick 3; max_sim = max([1,1,0,-1], [-1,-1,0,1]) = [1,1,0,1]. step 3: item2 0.3 -> 2.
    assert mmr(scores, 4, diversity=0.5, embeddings=emb).tolist() == [0, 3, 2, 1]


def test_mmr_full_diversity_and_ties():
    # d = 1: first pick is still the top score; then the least similar, ties by score.
    scores = [0.1, 0.9, 0.5, 0.7]
    cats = ["x", "x", "y", "y"]
    # pick 1 (top, x); then 3 and 2 (y) tie at 0 -> higher score 3; then 0 and 2 both
    # have max_sim 1 -> tie at -1 -> higher score 2; then 0.
    assert mmr(scores, 4, diversity=1.0, categories=cats).tolist() == [1, 3, 2, 0]
    # constant scores: rel is all 0, ties go to the lower index
    assert mmr([0.3, 0.3, 0.3], 3, diversity=0.5, categories=["a", "a", "b"]).tolist() \
        == [0, 2, 1]


def test_mmr_matches_naive_reference():
    rng = np.random.default_rng(5)
    for trial in range(5):
        n, d = 40, 6
        s = rng.normal(size=n)
        e = rng.normal(size=(n, d))
        en = e / np.linalg.norm(e, axis=1, keepdims=True)
        for div in (0.3, 0.7):
            got = mmr(s, 12, diversity=div, embeddings=e).tolist()
            assert got == naive_mmr(s, 12, div, en @ en.T)


def test_mmr_redundancy_is_the_redundancy_of_its_picks():
    rng = np.random.default_rng(6)
    s, e = rng.normal(size=30), rng.normal(size=(30, 4))
    cats = np.array(list("abcab") * 6, dtype=object)
    for kwargs in (dict(embeddings=e), dict(categories=cats),
                   dict(categories=cats, cap=2)):
        order, red = mmr(s, 8, diversity=0.4, return_redundancy=True, **kwargs)
        assert order.tolist() == mmr(s, 8, diversity=0.4, **kwargs).tolist()
        want = redundancy(order, embeddings=kwargs.get("embeddings"),
                          categories=None if "embeddings" in kwargs else cats)
        np.testing.assert_allclose(red, want, atol=1e-12)
    assert mmr(s, 3, return_redundancy=True)[1] is None          # no diversity, no similarity


def test_unit_rows_hand_and_errors():
    got = rerank.unit_rows([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
    np.testing.assert_array_equal(got, [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]])
    assert got.dtype == np.float64
    with pytest.raises(ValueError, match="item vectors must be finite"):
        rerank.unit_rows([[1.0, np.nan]], "item vectors")
    with pytest.raises(ValueError, match="shape \\[n, d\\], got shape \\(3,\\)"):
        rerank.unit_rows([1.0, 2.0, 3.0])


def test_mmr_on_rows_normalised_once_is_mmr_on_the_raw_rows():
    rng = np.random.default_rng(8)
    s, e = rng.normal(size=50), rng.normal(size=(50, 6)) * rng.uniform(0.1, 9, (50, 1))
    e[7] = 0.0                                         # a zero row stays zero
    cats = np.array(list("abcde") * 10, dtype=object)
    for kwargs in ({}, dict(cap=3, cap_categories=cats)):
        order, red = mmr(s, 12, diversity=0.4, embeddings=e, return_redundancy=True, **kwargs)
        order_u, red_u = mmr(s, 12, diversity=0.4, embeddings=rerank.unit_rows(e), unit=True,
                             return_redundancy=True, **kwargs)
        assert order_u.tolist() == order.tolist()
        np.testing.assert_array_equal(red_u, red)
    # unit=True takes the rows as they are: the similarities are their plain dot products
    e = [[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    order, red = mmr([1.0, 0.9, 0.8], 3, diversity=0.5, embeddings=e, unit=True,
                     return_redundancy=True)
    assert order.tolist() == [0, 1, 2] and red.tolist() == [0.0, 0.0, 2.0]
    red = mmr([1.0, 0.9, 0.8], 3, diversity=0.5, embeddings=e, return_redundancy=True)[1]
    np.testing.assert_allclose(red, [0.0, 0.0, 0.5 ** 0.5])


def test_mmr_k_edges():
    assert mmr([0.2, 0.9], 10, diversity=0.5, categories=[0, 1]).tolist() == [1, 0]
    assert mmr([0.2, 0.9], 0, diversity=0.5, categories=[0, 1]).tolist() == []
    assert mmr([], 3, diversity=0.5, categories=[]).tolist() == []
    out = mmr(np.arange(30.0), 30, diversity=0.4, categories=np.arange(30) % 3)
    assert sorted(out.tolist()) == list(range(30))


def test_mmr_errors():
    with pytest.raises(ValueError, match="needs embeddings= or categories="):
        mmr([0.1, 0.2], 2, diversity=0.5)
    with pytest.raises(ValueError, match="shape \\[n, d\\] with n=3 .* got shape \\(2, 4\\)"):
        mmr([0.1, 0.2, 0.3], 2, diversity=0.5, embeddings=np.ones((2, 4)))
    with pytest.raises(ValueError, match="scores has 3 elements but categories has 2"):
        mmr([0.1, 0.2, 0.3], 2, diversity=0.5, categories=["a", "b"])
    with pytest.raises(ValueError, match="diversity must be in \\[0, 1\\], got 2"):
        mmr([0.1], 1, diversity=2)
    with pytest.raises(ValueError, match="k must be a non-negative integer, got -1"):
        mmr([0.1], -1)


def naive_capped_mmr(scores, k, diversity, sim, cats, cap):
    """Textbook MMR that skips an item once its category holds ``cap`` picks."""
    s = np.asarray(scores, float)
    rel = (s - s.min()) / (s.max() - s.min())
    chosen, count = [], {}
    for _ in range(min(k, len(s))):
        best, best_val = None, -np.inf
        for i in range(len(s)):
            if i in chosen or count.get(cats[i], 0) >= cap:
                continue
            pen = max(sim[i, j] for j in chosen) if chosen else 0.0
            val = (1 - diversity) * rel[i] - diversity * pen
            if val > best_val:
                best, best_val = i, val
        if best is None:
            break
        chosen.append(best)
        count[cats[best]] = count.get(cats[best], 0) + 1
    return chosen


def test_mmr_with_category_caps_hand():
    scores = [1.0, 0.9, 0.8, 0.5, 0.0]  # rel = 1, 0.9, 0.8, 0.5, 0
    cats = ["a", "a", "a", "b", "b"]
    # no diversity: the relevance order under the cap (the third "a" is skipped)
    assert mmr(scores, 4, categories=cats, cap=2).tolist() == [0, 1, 3, 4]
    # d = 0.5, cap 1: pick 0 (a is now full, 1 and 2 are out); then 3 (0.25) over 4 (0);
    # then b is full too: only two items can be returned.
    assert mmr(scores, 4, diversity=0.5, categories=cats, cap=1).tolist() == [0, 3]
    # per-category caps: only "a" capped at 2 -> the greedy skips item 2 only
    assert mmr(scores, 5, categories=cats, cap={"a": 2}).tolist() == [0, 1, 3, 4]


def test_mmr_caps_count_their_own_categories():
    scores = [1.0, 0.8, 0.6, 0.0]
    emb = [[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]  # uncapped: [0, 2, 1, 3]
    caps_by = ["x", "y", "y", "x"]
    # pick 0 (x full: 3 out); step 2: item1 0.4 - 0.5 = -0.1 < item2 0.3 -> 2 (y full) -> done
    assert mmr(scores, 4, diversity=0.5, embeddings=emb, cap=1,
               cap_categories=caps_by).tolist() == [0, 2]
    # only y capped: after 0 and 2, item 1 is out and item 3 (0 - 0.5 / sqrt 2) comes last
    assert mmr(scores, 4, diversity=0.5, embeddings=emb, cap={"y": 1},
               cap_categories=caps_by).tolist() == [0, 2, 3]


def test_mmr_caps_match_references():
    rng = np.random.default_rng(11)
    for trial in range(4):
        n = 40
        s = rng.normal(size=n)
        cats = rng.integers(0, 4, n)
        sim = (cats[:, None] == cats[None, :]).astype(float)
        for cap in (1, 3):
            assert mmr(s, 12, diversity=0.4, categories=cats, cap=cap).tolist() == \
                naive_capped_mmr(s, 12, 0.4, sim, cats, cap)
            assert mmr(s, 12, categories=cats, cap=cap).tolist() == \
                category_cap(np.argsort(-s, kind="stable"), cats, cap)[:12].tolist()


def test_mmr_cap_errors():
    with pytest.raises(ValueError, match="cap= needs categories= or cap_categories="):
        mmr([0.1, 0.2], 2, cap=1)
    with pytest.raises(ValueError, match="scores has 2 elements but cap_categories has 1"):
        mmr([0.1, 0.2], 2, cap=1, cap_categories=["a"])


# --------------------------------------------------------------------------- redundancy


def test_redundancy_hand():
    # item 2 ("b") shares nothing with item 0 ("a"); item 1 ("a") repeats item 0's category
    assert redundancy([0, 2, 1], categories=["a", "a", "b"]).tolist() == [0.0, 0.0, 1.0]
    h = 1 / np.sqrt(2)
    emb = [[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    np.testing.assert_allclose(redundancy([0, 2, 1, 3], embeddings=emb), [0, 0, 1, h])
    assert redundancy([], categories=[]).tolist() == []
    with pytest.raises(ValueError, match="needs embeddings= or categories="):
        redundancy([0])


def test_redundancy_is_the_penalty_mmr_weighed():
    rng = np.random.default_rng(2)
    s, e, div = rng.normal(size=30), rng.normal(size=(30, 5)), 0.6
    order = mmr(s, 8, diversity=div, embeddings=e)
    pen = redundancy(order, embeddings=e)
    rel = (s - s.min()) / (s.max() - s.min())
    en = e / np.linalg.norm(e, axis=1, keepdims=True)
    for p in range(1, len(order)):  # the pick beat every other remaining item on the objective
        rest = [i for i in range(30) if i not in order[:p + 1]]
        best_other = max((1 - div) * rel[i] - div * max(en[i] @ en[j] for j in order[:p])
                         for i in rest)
        assert (1 - div) * rel[order[p]] - div * pen[p] >= best_other - 1e-12


# --------------------------------------------------------------------------- explore


def test_explore_is_deterministic_for_a_seed():
    s = np.linspace(0, 1, 50)
    a = explore(s, 10, temperature=1.0, seed=42)
    assert a.tolist() == explore(s, 10, temperature=1.0, seed=42).tolist()
    assert len(set(a.tolist())) == 10 and a.dtype == np.int64
    assert any(explore(s, 10, 1.0, seed=i).tolist() != a.tolist() for i in range(1, 5))
    g1, g2 = np.random.default_rng(3), np.random.default_rng(3)
    assert explore(s, 5, 1.0, seed=g1).tolist() == explore(s, 5, 1.0, seed=g2).tolist()


def test_explore_temperature_zero_and_k_edges():
    assert explore([3.0, 1.0, 2.0, 3.0], 3, temperature=0).tolist() == [0, 3, 2]
    assert sorted(explore([1.0, 2.0, 3.0], 10, 1.0, seed=0).tolist()) == [0, 1, 2]
    assert explore([1.0, 2.0], 0, 1.0, seed=0).tolist() == []


def test_explore_first_draw_follows_softmax():
    s = np.array([0.0, 1.0, 2.0])
    t = 2.0
    p = np.exp(s / t) / np.exp(s / t).sum()  # 0.186, 0.307, 0.506
    trials = 4000
    first = np.array([explore(s, 1, temperature=t, seed=i)[0] for i in range(trials)])
    freq = np.bincount(first, minlength=3) / trials
    np.testing.assert_allclose(freq, p, atol=0.03)
    # second draw, given item 2 came first: renormalised over {0, 1}
    pair = [explore(s, 2, temperature=t, seed=i).tolist() for i in range(trials)]
    second = [b for a, b in pair if a == 2]
    p1 = p[1] / (p[0] + p[1])
    assert np.mean(np.array(second) == 1) == pytest.approx(p1, abs=0.04)


def test_perturb_is_the_sampling_keys_of_explore():
    s = np.linspace(0, 1, 20)
    keys = perturb(s, temperature=0.5, seed=7)
    assert explore(s, 6, temperature=0.5, seed=7).tolist() == \
        np.argsort(-keys, kind="stable")[:6].tolist()
    assert perturb(s, temperature=0, seed=7).tolist() == s.tolist()
    assert perturb(s, 0.5, seed=7).tolist() == keys.tolist()
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        perturb(s, temperature=np.inf)


def test_explore_errors():
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0, got -1"):
        explore([1.0], 1, temperature=-1)
    with pytest.raises(ValueError, match="scores must be finite"):
        explore([1.0, np.nan], 1, temperature=1.0)
