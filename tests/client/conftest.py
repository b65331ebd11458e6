"""What the client tests share: the exported tables of the session's two-tower, and test users
with their request context (from the tiny synthetic set of ``tests/conftest.py``)."""
import os

import pytest


@pytest.fixture(scope="session")
def tables(trained):
    """The two-tower export's ``assets.extra``: item / user tables and the model card."""
    return os.path.join(trained["two_tower"][0]["export_path"], "assets.extra")


@pytest.fixture(scope="session")
def context(tiny_synthetic):
    """``context(user_id)``: the request context (hour, device, ...) of the user's first test
    row."""
    ds = tiny_synthetic
    names = ds.feature_set.with_role("context")

    def of(user):
        row = ds.test[ds.test.user_id == user].iloc[0]
        return {n: row[n] for n in names}

    return of


@pytest.fixture(scope="session")
def users(tiny_synthetic, context):
    """``users(i)``: ``(user_id, context)`` of the ``i``-th distinct user of the test split."""
    ids = tiny_synthetic.test.user_id.drop_duplicates()

    def nth(i=0):
        u = ids.iloc[i]
        return u, context(u)

    return nth


@pytest.fixture(scope="session")
def user(users):
    """``(user_id, context)`` of the first test user."""
    return users(0)
