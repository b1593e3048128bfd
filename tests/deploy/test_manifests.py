"""The Kubernetes and KServe manifests, rendered with kustomize and validated offline.

Kubernetes objects: ``kubernetes-validate`` (the official OpenAPI schemas) in strict mode, where
an unknown field or an unknown kind fails.  KServe objects: KServe's own CRD schemas (an
extract, see ``extract_kserve_schemas.py``), also with unknown fields failing.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from histoedge.serving.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KSERVE = json.loads((Path(__file__).resolve().parent / "kserve_crd_schemas.json").read_text())
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")  # gRPC probes are GA from 1.27
KUSTOMIZATIONS = ("base", "overlays/hospital", "overlays/demo", "training")


def kustomize(folder: str) -> list[dict]:
    """``kubectl kustomize`` (kustomize built into kubectl) or a standalone ``kustomize build``."""
    if shutil.which("kubectl"):
        command = ["kubectl", "kustomize", str(ROOT / folder)]
    elif shutil.which("kustomize"):
        command = ["kustomize", "build", str(ROOT / folder)]
    else:
        pytest.fail("rendering the manifests needs kubectl (it bundles kustomize) or kustomize on PATH")
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def strict(schema: dict) -> dict:
    """A copy of a CRD schema that rejects properties it does not define (as the API server's
    field validation does with ``fieldValidation=Strict``)."""
    schema = copy.deepcopy(schema)

    def visit(node: dict) -> None:
        if "properties" in node and "additionalProperties" not in node \
                and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        for child in node.get("properties", {}).values():
            visit(child)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                visit(node[key])
        for option in node.get("anyOf", []):
            visit(option)

    visit(schema)
    return schema


def validate(document: dict) -> None:
    """Raise unless ``document`` is a valid object of a known kind."""
    kind = KSERVE["kinds"].get(document.get("kind"))
    if document.get("apiVersion", "").startswith("serving.kserve.io/"):
        if kind is None or kind["apiVersion"] != document["apiVersion"]:
            raise ValueError(f"unknown KServe kind {document.get('apiVersion')} {document.get('kind')}")
        jsonschema.validate(document, strict(kind["schema"]))
        return
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(document, version, strict=True)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    out = {folder: kustomize(folder) for folder in KUSTOMIZATIONS}
    out["kserve"] = [doc for path in sorted((ROOT / "kserve").glob("*.yaml"))
                     for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def one(documents: list[dict], kind: str) -> dict:
    found = [doc for doc in documents if doc["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}"
    return found[0]


def test_every_object_is_valid(rendered):
    counts = {}
    for folder, documents in rendered.items():
        assert documents, folder
        for document in documents:
            validate(document)
            counts[document["kind"]] = counts.get(document["kind"], 0) + 1
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "Job",
            "ServingRuntime", "InferenceService"} <= set(counts), counts


def test_validation_is_strict(rendered):
    deployment = copy.deepcopy(one(rendered["base"], "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate({"apiVersion": "example.org/v1", "kind": "Widget", "metadata": {"name": "w"}})
    service = copy.deepcopy(one(rendered["kserve"], "InferenceService"))
    service["spec"]["predictor"]["model"]["storageURI"] = "s3://typo"
    with pytest.raises(jsonschema.ValidationError):
        validate(service)
    runtime = copy.deepcopy(one(rendered["kserve"], "ServingRuntime"))
    runtime["spec"]["multiModel"] = "no"  # a boolean in the CRD
    with pytest.raises(jsonschema.ValidationError):
        validate(runtime)
    with pytest.raises(ValueError, match="unknown KServe kind"):
        validate({"apiVersion": "serving.kserve.io/v1alpha1", "kind": "InferenceGraph", "metadata": {"name": "g"}})


@pytest.mark.parametrize("folder", ["base", "overlays/hospital", "overlays/demo"])
def test_serving_deployment(rendered, folder):
    documents = rendered[folder]
    pod = one(documents, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {item["name"]: item["value"] for item in container["env"]}
    # SIGTERM grace: preStop sleep + the server's drain + margin
    grace = float(env.get("HISTOEDGE_GRACE_SECONDS", ServerSettings().grace_seconds))
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + grace + 5
    # non-root, read-only root filesystem, no privileges, requests and limits
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert set(container["resources"]["requests"]) == set(container["resources"]["limits"]) == {"cpu", "memory"}
    # the model repository, read-only, where the server looks for it
    mount = next(m for m in container["volumeMounts"] if m["name"] == "models")
    assert mount["readOnly"] is True and mount["mountPath"] == env["HISTOEDGE_REPO"]
    # probes on grpc.health.v1: the kubelet's own, or `histoedge health` where TLS is on
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = container[probe]
        if "HISTOEDGE_TLS_CERT" in env:
            assert spec["exec"]["command"][:2] == ["histoedge", "health"] and "--tls-ca" in spec["exec"]["command"]
        else:
            assert spec["grpc"]["port"] == int(env["HISTOEDGE_PORT"])
    kinds = {doc["kind"] for doc in documents}
    assert {"Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    policy = one(documents, "NetworkPolicy")["spec"]
    assert policy["egress"] == [] and {8000, 8001, 8002} == {p["port"] for rule in policy["ingress"] for p in rule["ports"]}


def test_overlay_sets_image_model_source_replicas_and_tls(rendered):
    documents = rendered["overlays/hospital"]
    deployment = one(documents, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.hospital.example/histoedge/serve:0.1.0"
    models = next(v for v in pod["volumes"] if v["name"] == "models")
    assert models["persistentVolumeClaim"] == {"claimName": "pathology-models", "readOnly": True}
    assert deployment["spec"]["replicas"] == one(documents, "HorizontalPodAutoscaler")["spec"]["minReplicas"] == 3
    tls = next(v for v in pod["volumes"] if v["name"] == "tls")
    assert tls["secret"]["secretName"] == "histoedge-tls"
    env = {item["name"]: item["value"] for item in pod["containers"][0]["env"]}
    assert env["HISTOEDGE_TLS_CERT"].startswith("/etc/histoedge/tls/")
    assert {doc["metadata"].get("namespace") for doc in documents} == {"pathology"}


def test_kserve_runtime_and_training_job(rendered):
    runtime = one(rendered["kserve"], "ServingRuntime")["spec"]
    assert runtime["protocolVersions"] == ["grpc-v2"]
    container = runtime["containers"][0]
    assert container["args"][:2] == ["--repo", "/mnt/models"] and container["ports"][0]["name"] == "h2c"
    model = one(rendered["kserve"], "InferenceService")["spec"]["predictor"]["model"]
    assert model["runtime"] == "histoedge" and model["protocolVersion"] == "grpc-v2" and "storageUri" in model
    job = one(rendered["training"], "Job")["spec"]
    assert job["completionMode"] == "Indexed" and job["completions"] == job["parallelism"] == 2
    script = job["template"]["spec"]["containers"][0]["args"][0]
    assert "TF_CONFIG" in script and "${JOB_COMPLETION_INDEX}" in script and "--distributed" in script
    assert "--backup-dir /backup" in script
