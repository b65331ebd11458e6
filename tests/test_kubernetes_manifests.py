"""serving/kubernetes/*.yaml parse, and hang together: each Service and autoscaler points at
a Deployment that exists, every replica has resources and a readiness probe on a served
model's status, and the config files the containers read are the ones in serving/."""
import pathlib
import re

import pytest

yaml = pytest.importorskip("yaml")

SERVING = pathlib.Path(__file__).resolve().parent.parent / "serving"
MANIFESTS = sorted((SERVING / "kubernetes").glob("*.yaml"))


def _documents():
    docs = []
    for path in MANIFESTS:
        with open(path) as f:
            docs += [d for d in yaml.safe_load_all(f) if d]
    return docs


def test_manifests_parse_as_kubernetes_objects():
    assert [p.name for p in MANIFESTS] == ["kserve.yaml", "rankers.yaml", "retrieval.yaml",
                                           "storage.yaml"]
    for doc in _documents():
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
        assert doc["metadata"]["name"]


def test_deployments_are_served_scaled_probed_and_read_existing_configs():
    docs = _documents()
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    deployments = by_kind["Deployment"]
    assert set(deployments) == {"recsys-rankers", "recsys-retrieval"}
    claims = set(by_kind["PersistentVolumeClaim"])
    for name, dep in deployments.items():
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
        service = by_kind["Service"][name]
        assert service["spec"]["selector"].items() <= labels.items()
        hpa = by_kind["HorizontalPodAutoscaler"][name]
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                 "name": name}
        assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        assert container["resources"]["requests"]["cpu"]
        assert container["resources"]["limits"]["memory"]
        probe = container["readinessProbe"]["httpGet"]
        model = re.fullmatch(r"/v1/models/(\w+)/metadata", probe["path"]).group(1)
        config = next(a.split("=", 1)[1] for a in container["args"]
                      if a.startswith("--model_config_file="))
        config_file = SERVING / pathlib.Path(config).name
        assert config_file.exists(), config
        assert f'name: "{model}"' in config_file.read_text()   # the probe checks a served model
        for arg in container["args"]:
            if arg.split("=")[0] in ("--batching_parameters_file", "--monitoring_config_file"):
                assert (SERVING / pathlib.Path(arg.split("=", 1)[1]).name).exists(), arg
        volumes = dep["spec"]["template"]["spec"]["volumes"]
        assert {v["persistentVolumeClaim"]["claimName"] for v in volumes
                if "persistentVolumeClaim" in v} <= claims
        ports = {p["name"] for p in container["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


def test_kserve_inference_service_uses_the_tensorflow_runtime():
    (isvc,) = [d for d in _documents() if d["kind"] == "InferenceService"]
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "tensorflow"
    assert model["storageUri"].startswith("pvc://recsys-models/")
