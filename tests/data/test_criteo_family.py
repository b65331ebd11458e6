"""The criteo-family generators: deterministic per seed, the click rate asked for, a sane
oracle, the Criteo layout, and each member's planted property."""
import numpy as np
import pytest

from recsys_tf import data
from recsys_tf.data import criteo, criteo_family
from recsys_tf.metrics import auc

N = 5000


@pytest.mark.parametrize("member", sorted(criteo_family.MEMBERS))
def test_member_is_deterministic_with_its_click_rate_and_oracle(member):
    a = criteo_family.generate(member, N, seed=3)
    b = criteo_family.generate(member, N, seed=3)
    c = criteo_family.generate(member, N, seed=4)
    assert a.equals(b)
    assert not a["p_click"].equals(c["p_click"])
    assert list(a.columns) == list(criteo.COLUMNS) + ["p_click"]
    ctr = criteo_family.spec(member)["ctr"]
    assert a["p_click"].mean() == pytest.approx(ctr, rel=1e-3)       # the bias is solved for it
    assert abs(a["label"].mean() - ctr) < 4 * np.sqrt(ctr * (1 - ctr) / N)
    oracle = auc(a["label"].to_numpy(), a["p_click"].to_numpy())
    assert 0.65 < oracle < 0.95, oracle
    assert a["C1"].map(len).isin([0, 8]).all() and np.isnan(a["I1"]).any()


def test_click_rates_span_3_to_30_percent_and_ctr_overrides():
    rates = [criteo_family.spec(m)["ctr"] for m in criteo_family.MEMBERS]
    assert min(rates) == 0.03 and max(rates) == 0.3
    x = criteo_family.generate("flat", N, seed=0, ctr=0.07)
    assert x["p_click"].mean() == pytest.approx(0.07, rel=1e-3)


def test_missing_informative_vs_random():
    """Informative: rows with I1 missing click less than the rest (a missing count is 0
    events and I1's effect is positive); at random the gap is small (the missing rows sit at
    I1's mean effect)."""
    inf = criteo_family.generate("missing-informative", 40000, seed=0)
    rnd = criteo_family.generate("missing-random", 40000, seed=0)

    def gap(x):
        miss = np.isnan(x["I1"].to_numpy())
        return x["p_click"][~miss].mean() - x["p_click"][miss].mean()

    assert gap(inf) > 0.1 and abs(gap(rnd)) < 0.05


def test_heavy_tail_cardinalities():
    x = criteo_family.generate("heavy-tail", 20000, seed=0)
    assert max(criteo_family.spec("heavy-tail")["cards"]) == 400_000
    assert x["C3"].nunique() > 5000      # a third of 20,000 rows hold a value of their own


def test_drift_moves_the_click_rate_along_the_file():
    x = criteo_family.generate("drift", 40000, seed=0)
    p = x["p_click"].to_numpy()
    assert abs(p[-4000:].mean() - p[:4000].mean()) > 0.02
    flat = criteo_family.generate("frequent-clicks", 40000, seed=0)["p_click"].to_numpy()
    assert abs(flat[-4000:].mean() - flat[:4000].mean()) < 0.01


def test_registered_and_loaded_like_criteo():
    ds = data.load("criteo-family-dense-cross", n_rows=2000, seed=1, min_count=2,
                   missing="fill")
    assert ds.name == "criteo-family-dense-cross"
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (1600, 200, 200)
    assert ds.feature_set["I1"].missing == "fill"
    assert 0.6 < ds.info["oracle_auc_test"] < 1.0
    with pytest.raises(ValueError, match="member='nope'"):
        criteo_family.load(member="nope")
