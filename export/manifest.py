"""The model package manifest: ``MODELS/<name>/<version>/manifest.json``.

This module only uses the standard library so that the serving side can read
manifests without TensorFlow, tf2onnx or onnx installed.

Example::

    manifest = Manifest.load(Path("models/breast/3"))
    manifest.check_checksum(Path("models/breast/3"))
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histoedge.export.errors import ManifestError

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
SCHEMA_VERSION = 1



@dataclass(frozen=True)
class TensorSpec:
    """Name, Open Inference Protocol datatype and shape (-1 for any) of a tensor."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TensorSpec":
        return cls(name=str(data["name"]), datatype=str(data["datatype"]),
                   shape=tuple(int(d) for d in data["shape"]))


@dataclass(frozen=True)
class Manifest:
    """Everything a server needs to know about one exported model version.

    Args:
        name: model name, the folder under the repository root.
        version: positive integer, the folder under ``name``.
        created: ISO-8601 UTC timestamp of the export.
        inputs: input tensors, normally one ``image`` UINT8 [-1, H, W, 3].
        outputs: output tensors (``probabilities``, ``member_probabilities``).
        classes: class names in output column order.
        threshold: decision threshold on the positive class probability for
            binary models; ``None`` means arg-max.
        positive_class: column index of the positive class for binary models.
        preprocessing: how raw images become the input tensor
            (``{"color": "RGB", "resize": [H, W], "interpolation": "area"}``).
        precision: ``fp32``, ``fp16`` or ``int8``.
        members: names of the ensemble members, in ``member_probabilities`` order.
        metrics: test metrics recorded at export time.
        source: where the model came from (run directory or Keras file).
        toolkit_version: histoedge version that wrote the package.
        sha256: SHA-256 hex digest of ``model.onnx``.
        extra: free-form facts (opset, measured speed, ensemble method).
    """

    name: str
    version: int
    created: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    classes: tuple[str, ...]
    threshold: float | None
    positive_class: int | None
    preprocessing: dict[str, Any]
    precision: str
    members: tuple[str, ...]
    sha256: str
    metrics: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    toolkit_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) the model expects, read from the ``image`` input."""
        spec = self.input("image")
        return int(spec.shape[1]), int(spec.shape[2])

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["inputs"] = [spec.to_dict() for spec in self.inputs]
        data["outputs"] = [spec.to_dict() for spec in self.outputs]
        data["classes"] = list(self.classes)
        data["members"] = list(self.members)
        data["schema_version"] = SCHEMA_VERSION
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        try:
            return cls(
                name=str(data["name"]),
                version=int(data["version"]),
                created=str(data["created"]),
                inputs=tuple(TensorSpec.from_dict(d) for d in data["inputs"]),
                outputs=tuple(TensorSpec.from_dict(d) for d in data["outputs"]),
                classes=tuple(str(c) for c in data["classes"]),
                threshold=None if data.get("threshold") is None else float(data["threshold"]),
                positive_class=None if data.get("positive_class") is None else int(data["positive_class"]),
                preprocessing=dict(data.get("preprocessing", {})),
                precision=str(data["precision"]),
                members=tuple(str(m) for m in data.get("members", ())),
                sha256=str(data["sha256"]),
                metrics=dict(data.get("metrics", {})),
                source=str(data.get("source", "")),
                toolkit_version=str(data.get("toolkit_version", "")),
                extra=dict(data.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ManifestError(f"malformed manifest: {error!r}") from error

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, version_dir: Path) -> "Manifest":
        """Read ``version_dir/manifest.json``."""
        path = Path(version_dir) / MANIFEST_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as error:
            raise ManifestError(f"{path} does not exist") from error
        except json.JSONDecodeError as error:
            raise ManifestError(f"{path} is not valid JSON: {error}") from error
        return cls.from_dict(data)

    def check_checksum(self, version_dir: Path) -> None:
        """Raise :class:`ManifestError` unless ``model.onnx`` hashes to ``sha256``."""
        actual = sha256_file(Path(version_dir) / MODEL_FILE)
        if actual != self.sha256:
            raise ManifestError(
                f"{Path(version_dir) / MODEL_FILE}: SHA-256 {actual} does not match "
                f"manifest {self.sha256}")


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()
