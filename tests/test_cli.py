"""The command-line contract: train writes the metrics JSON; errors are clear; --help works."""
import json
import subprocess
import sys

import pytest

from recsys_tf.cli import main
from recsys_tf.export import read_model_card
from recsys_tf.pipeline import model_config_text

TINY_OPTS = ["--data-option", "n_users=40", "--data-option", "n_items=30",
             "--data-option", "n_train=1500", "--data-option", "n_test=300"]


def test_train_ranker_writes_contract_metrics(tmp_path):
    out = tmp_path / "m.json"
    rc = main(["train", "deepfm", "--data", "synthetic", *TINY_OPTS, "--epochs", "1",
               "--batch-size", "128", "--model-option", "dim=4", "--model-option",
               "dnn_units=[8]", "--metrics-out", str(out), "--export-dir", str(tmp_path / "sm")])
    assert rc == 0
    m = json.loads(out.read_text())
    for key in ("model", "dataset", "n_train", "n_test", "train_seconds",
                "train_examples_per_sec", "auc", "logloss", "oracle_auc"):
        assert key in m, key
    assert m["model"] == "deepfm" and m["dataset"] == "synthetic"
    assert 0.0 <= m["auc"] <= 1.0 and m["logloss"] > 0
    assert (tmp_path / "sm" / "deepfm" / "1" / "saved_model.pb").exists()
    card = read_model_card(str(tmp_path / "sm" / "deepfm" / "1"))
    assert card["training"] == {"epochs": 1, "batch_size": 128, "learning_rate": 1e-3,
                                "embedding_lr_multiplier": 3.0, "weight_averaging": 0.99}
    # a second export takes the next version, never overwriting the first
    assert main(["train", "deepfm", "--data", "synthetic", *TINY_OPTS, "--epochs", "1",
                 "--model-option", "dim=4", "--model-option", "dnn_units=[8]",
                 "--embedding-lr-multiplier", "1.5", "--weight-averaging", "0",
                 "--warmup-batch-sizes", "8", "20", "--export-dir", str(tmp_path / "sm")]) == 0
    assert (tmp_path / "sm" / "deepfm" / "2" / "saved_model.pb").exists()
    training = read_model_card(str(tmp_path / "sm" / "deepfm" / "2"))["training"]
    assert training["embedding_lr_multiplier"] == 1.5 and training["weight_averaging"] == 0.0
    # warmup records: three one-row requests, then one per --warmup-batch-sizes entry, each a
    # valid request for the exported signature
    assert _warmup_rows(tmp_path / "sm" / "deepfm" / "1") == [1, 1, 1]
    assert _warmup_rows(tmp_path / "sm" / "deepfm" / "2") == [1, 1, 1, 8, 20]
    config = model_config_text(str(tmp_path / "sm"))
    assert 'name: "deepfm"' in config and "model_platform" in config


def _warmup_rows(version_dir):
    """Rows of each warmup request, after running it through the exported signature."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    fn = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    rows = []
    for record in tf.data.TFRecordDataset(str(version_dir / "assets.extra" /
                                              "tf_serving_warmup_requests")):
        request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        out = fn(**inputs)["probability"].numpy()
        assert sorted(inputs) == sorted(fn.structured_input_signature[1])
        rows.append(len(out))
    return rows


def test_train_two_tower_writes_retrieval_metrics(tmp_path):
    out = tmp_path / "m.json"
    assert main(["train", "two_tower", "--data", "synthetic", *TINY_OPTS, "--epochs", "1",
                 "--model-option", "dim=8", "--metrics-out", str(out)]) == 0
    m = json.loads(out.read_text())
    for key in ("recall_at_10", "recall_at_100", "top_100_accuracy", "n_train", "n_test"):
        assert key in m, key


def test_train_passes_the_embedding_lr_multiplier(monkeypatch):
    from recsys_tf import data, pipeline, training

    seen = []
    real = training.train_ranker
    monkeypatch.setattr(training, "train_ranker",
                        lambda *a, **k: seen.append(k["embedding_lr_multiplier"]) or real(*a, **k))
    ds = data.load("synthetic", n_users=40, n_items=30, n_train=600, n_test=200)
    _, model = pipeline.train("deepfm", ds, epochs=1, verbose=0, options={"dim": 4, "dnn_units": [8]},
                         embedding_lr_multiplier=1.5)
    assert model.optimizer.sparse_multiplier == 1.5
    pipeline.train("deepfm", ds, epochs=1, verbose=0, options={"dim": 4, "dnn_units": [8]})
    assert seen == [1.5, training.EMBEDDING_LR_MULTIPLIER]


def _error_line(capsys, argv):
    """Runs ``argv``; returns its stderr, checked to be one ``error:`` line, no traceback."""
    assert main(argv) == 2, argv
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.out + captured.err
    return lines[0]


def test_train_mistakes_are_one_error_line(capsys):
    assert "unknown model 'nope'; expected one of two_tower" in _error_line(
        capsys, ["train", "nope", "--data", "synthetic"])
    assert "--embedding-lr-multiplier 0: expected a number > 0" in _error_line(
        capsys, ["train", "deepfm", "--data", "synthetic", "--embedding-lr-multiplier", "0"])
    assert "--weight-averaging 1: expected a momentum in [0, 1)" in _error_line(
        capsys, ["train", "deepfm", "--data", "synthetic", "--weight-averaging", "1"])
    assert "--warmup-batch-sizes 0: expected a number of rows >= 1" in _error_line(
        capsys, ["train", "deepfm", "--data", "synthetic", "--warmup-batch-sizes", "0"])
    line = _error_line(capsys, ["train", "deepfm", "--data", "nonexist"])
    assert "--data 'nonexist': unknown dataset; expected one of" in line and "criteo" in line
    assert "--data-dir '/no/such/dir': no such directory" in _error_line(
        capsys, ["train", "deepfm", "--data", "criteo", "--data-dir", "/no/such/dir"])
    assert "--data-option 'oops': expected KEY=VALUE" in _error_line(
        capsys, ["train", "deepfm", "--data", "synthetic", "--data-option", "oops"])
    assert "--data-option bogus: dataset 'synthetic' has no such option; expected one of" \
        in _error_line(capsys, ["train", "deepfm", "--data", "synthetic", "--data-option",
                                "bogus=1"])


def test_criteo_file_missing_names_the_file_and_what_was_expected(capsys, tmp_path):
    line = _error_line(capsys, ["train", "deepfm", "--data", "criteo", "--data-dir",
                                str(tmp_path)])
    assert str(tmp_path) in line and "train.txt" in line and "Expected" in line


def test_data_mistakes_are_one_error_line(capsys):
    assert "--data 'nope': unknown dataset" in _error_line(capsys, ["data", "nope"])


def test_evaluate_mistakes_are_one_error_line(capsys, tmp_path):
    assert "--model-dir '/no/such/dir': no such directory; expected an exported ranker" in \
        _error_line(capsys, ["evaluate", "--model-dir", "/no/such/dir", "--data", "synthetic"])
    assert "holds no model card" in _error_line(
        capsys, ["evaluate", "--model-dir", str(tmp_path), "--data", "synthetic"])


def test_export_and_recommend_mistakes_are_one_error_line(capsys, tmp_path):
    assert "--export-dir '/no/such/dir': no such directory" in _error_line(
        capsys, ["export", "--export-dir", "/no/such/dir"])
    assert "no exported 'two_tower' under" in _error_line(
        capsys, ["recommend", "--user-id", "u0", "--export-dir", str(tmp_path)])


def test_serve_mistake_is_one_error_line(capsys, tmp_path):
    missing = str(tmp_path / "nothing.config")
    rc = main(["serve", "--model_config_file", missing, "--port", "0"])
    assert rc == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err


def test_debug_keeps_the_traceback():
    with pytest.raises(Exception, match="unknown dataset"):
        main(["--debug", "train", "deepfm", "--data", "nonexist"])


def test_every_command_has_help():
    for cmd in ("data", "train", "evaluate", "export", "serve", "recommend", "demo", "bench"):
        r = subprocess.run([sys.executable, "-m", "recsys_tf.cli", cmd, "--help"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (cmd, r.stderr)
        assert "usage: recsys-tf" in r.stdout
