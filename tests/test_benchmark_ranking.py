"""benchmarks/ranking.py --family runs end to end on a tiny member and writes its results."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_family_benchmark_writes_ours_at_its_defaults(tmp_path):
    out = tmp_path / "family.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "ranking.py"), "--family",
         "--no-deepctr", "--sets", "flat", "--models", "deepfm", "--seeds", "0",
         "--family-rows", "4000", "--model-option", "deepfm:dnn_units=[16]",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    member = result["results"]["criteo-family-flat"]
    assert member["held_out"] is False and member["n_train"] == 3200
    ours = member["models"]["deepfm"]["ours"]
    assert 0.5 < ours["auc"] <= 1 and len(ours["auc_per_seed"]) == 1
    assert ours["runs"][0]["epochs_run"] in (1, 2)
    assert result["config"]["model_options"] == {"deepfm": {"dnn_units": [16]}}
    assert "criteo-family-flat" in result["table_markdown"]
    assert "criteo-family-flat" in proc.stdout
