"""Rebuild ``kserve_crd_schemas.json``: the parts of KServe's CRD schemas our manifests use.

KServe's full CRDs (``config/crd/full/`` in github.com/kserve/kserve) are about 2 MB; the
tests need only the InferenceService (v1beta1) and ServingRuntime (v1alpha1) schemas along the
fields ``deploy/kubernetes/kserve/*.yaml`` set.  Every other property is kept by name and type
only (so a field we do not use is still known, and a misspelt one is not), descriptions go.

Run it after changing the KServe manifests, with a checkout of kserve/kserve::

    python tests/deploy/extract_kserve_schemas.py /path/to/kserve [REVISION]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
MANIFESTS = HERE.parents[1] / "deploy" / "kubernetes" / "kserve"
CRDS = {"InferenceService": ("serving.kserve.io_inferenceservices.yaml", "v1beta1"),
        "ServingRuntime": ("serving.kserve.io_servingruntimes.yaml", "v1alpha1")}
KEEP = ("type", "required", "enum", "format", "pattern", "maximum", "minimum", "maxLength", "minLength",
        "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string", "nullable")


def prune(schema: dict, values: list) -> dict:
    """``schema`` reduced to what ``values`` (instances of it from our manifests) reach."""
    out = {key: schema[key] for key in KEEP if key in schema}
    if "anyOf" in schema:
        out["anyOf"] = [prune(option, []) for option in schema["anyOf"]]
    if "properties" in schema:
        out["properties"] = {}
        for name, child in schema["properties"].items():
            used = [v[name] for v in values if isinstance(v, dict) and name in v]
            out["properties"][name] = prune(child, used) if used else \
                {key: child[key] for key in ("type", "x-kubernetes-preserve-unknown-fields") if key in child}
    if isinstance(schema.get("additionalProperties"), dict):
        nested = [item for v in values if isinstance(v, dict) for item in v.values()]
        out["additionalProperties"] = prune(schema["additionalProperties"], nested)
    if "items" in schema:
        nested = [item for v in values if isinstance(v, list) for item in v]
        out["items"] = prune(schema["items"], nested)
    return out


def main(kserve: Path, revision: str) -> None:
    documents = [doc for path in sorted(MANIFESTS.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
    result = {"source": "https://github.com/kserve/kserve config/crd/full/", "revision": revision, "kinds": {}}
    for kind, (filename, version) in CRDS.items():
        crd = yaml.safe_load((kserve / "config" / "crd" / "full" / filename).read_text())
        served = next(v for v in crd["spec"]["versions"] if v["name"] == version)
        instances = [doc for doc in documents if doc.get("kind") == kind]
        result["kinds"][kind] = {"apiVersion": f"{crd['spec']['group']}/{version}",
                                 "schema": prune(served["schema"]["openAPIV3Schema"], instances)}
    (HERE / "kserve_crd_schemas.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "unknown")
