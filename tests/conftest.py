"""Shared fixtures: the tiny synthetic data set, and one trained + exported + served pair of
models per test session (two-tower retriever and DeepFM ranker)."""
import os

import pytest

import recsys_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")
os.environ.setdefault("RECSYS_TF_DATA_DIR", SHARED_DATA)

TINY = dict(n_users=60, n_items=50, n_categories=6, n_train=3000, n_test=600, seed=3)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test, not part of the default run")


@pytest.fixture(scope="session")
def data_dir():
    path = os.environ["RECSYS_TF_DATA_DIR"]
    if not os.path.isdir(path):
        pytest.skip(f"real data sets not found at {path} (set RECSYS_TF_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def tiny_synthetic():
    from recsys_tf import data

    return data.load("synthetic", None, **TINY)


@pytest.fixture(scope="session")
def trained(tiny_synthetic, tmp_path_factory):
    """Two-tower + DeepFM trained for a few steps on the tiny set and exported once."""
    from recsys_tf.pipeline import train

    root = str(tmp_path_factory.mktemp("saved_models"))
    tt, tt_model = train("two_tower", tiny_synthetic, epochs=2, batch_size=128, export_dir=root,
                         verbose=0, options={"dim": 8, "hidden": [16]})
    fm, fm_model = train("deepfm", tiny_synthetic, epochs=1, batch_size=128, export_dir=root,
                         verbose=0, options={"dim": 4, "dnn_units": [16]})
    return {"root": root, "two_tower": (tt, tt_model), "deepfm": (fm, fm_model)}


@pytest.fixture(scope="session")
def server(trained):
    """The bundled server on an ephemeral 127.0.0.1 port, serving the session's exports."""
    from recsys_tf.server.server import ModelServer

    srv = ModelServer(model_base_path=trained["root"], host="127.0.0.1", port=0)
    port = srv.start()
    yield f"127.0.0.1:{port}"
    srv.stop()
