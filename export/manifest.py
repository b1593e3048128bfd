"""The model package contract: tensor names, version folders and ``manifest.json``.

A model package is ``MODELS/<name>/<version>/{model.onnx, manifest.json}``.  Every
stage takes these facts from here: the export writes packages, the server reads
them, the client and the tests speak the same tensor names.  This module only uses
the standard library so that the serving side can read manifests without
TensorFlow, tf2onnx or onnx installed.

Example::

    manifest = Manifest.load(Path("models/breast/3"))
    manifest.check_checksum(Path("models/breast/3"))
    version_folders(Path("models/breast"))      # {3: Path("models/breast/3")}
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import histoedge
from histoedge.export.errors import ManifestError

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
SCHEMA_VERSION = 1
# Written beside a dataset (``histoedge data synth`` does) to declare its images' field of
# view: ``{"microns_per_pixel": 2.0, "image_size": [64, 64]}``; export copies it into the manifest.
DATASET_INFO_FILE = "histoedge-dataset.json"

# Tensor names.  The graph takes IMAGE and gives PROBABILITIES and MEMBER_PROBABILITIES;
# the server also accepts IMAGE_BYTES (encoded images it decodes and resizes to IMAGE)
# and answers LABEL (class names from PROBABILITIES and the manifest's threshold).
IMAGE = "image"                                 # UINT8 [N, H, W, 3], RGB
IMAGE_BYTES = "image_bytes"                     # BYTES [N], PNG/JPEG/TIFF/BMP files
PROBABILITIES = "probabilities"                 # FP32 [N, C], the ensemble's
MEMBER_PROBABILITIES = "member_probabilities"   # FP32 [N, M, C], each member's
LABEL = "label"                                 # BYTES [N], UTF-8 class names
# The fitted stain-normalisation reference (export/stain.py) under the manifest's "preprocessing".
STAIN_KEY = "stain_normalisation"

# A version folder is a positive integer written in ASCII digits without leading zeros,
# small enough for an int64 (the protocol's version numbers).  ``str.isdigit`` is not
# the rule: it accepts '²', '①' and Arabic-Indic digits.  Anything else in a model
# folder (".tmp-3-..." staging folders, "latest", "0", "007") is not a version.
MAX_VERSION_DIGITS = 18
_VERSION = re.compile(f"[1-9][0-9]{{0,{MAX_VERSION_DIGITS - 1}}}")


def parse_version(text: str) -> int | None:
    """The version number ``text`` (a folder name or a request's version) stands for, or None.

    Example::

        parse_version("12") == 12 and parse_version("012") is None and parse_version("²") is None
    """
    if not isinstance(text, str) or not _VERSION.fullmatch(text):
        return None
    return int(text)


def version_folders(model_dir: Path) -> dict[int, Path]:
    """Published versions of one model: version number -> folder, in ascending order."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return {}
    found = {}
    for path in model_dir.iterdir():
        number = parse_version(path.name)
        if number is not None and path.is_dir():
            found[number] = path
    return dict(sorted(found.items()))



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
class FieldOfView:
    """Physical size of the training images: what a slide tile must cover.

    Args:
        microns_per_pixel: pixel size of the training images as stored (before any resize).
        image_size: (height, width) of the training images as stored, in pixels.

    Example::

        FieldOfView(0.5, (512, 512)).microns   # (256.0, 256.0): tiles of 256 x 256 um
    """

    microns_per_pixel: float
    image_size: tuple[int, int]

    def __post_init__(self):
        if not self.microns_per_pixel > 0 or min(self.image_size) < 1 or len(self.image_size) != 2:
            raise ManifestError(f"invalid field of view: {self.microns_per_pixel} um/px, "
                                f"{self.image_size} px")

    @property
    def microns(self) -> tuple[float, float]:
        """(height, width) of one training image in microns."""
        return (self.image_size[0] * self.microns_per_pixel, self.image_size[1] * self.microns_per_pixel)

    def to_dict(self) -> dict[str, Any]:
        return {"microns_per_pixel": self.microns_per_pixel, "image_size": list(self.image_size)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "FieldOfView | None":
        if data is None:
            return None
        height, width = (int(v) for v in data["image_size"])
        return cls(float(data["microns_per_pixel"]), (height, width))


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
        profile: the reference profile file beside the manifest, ``{"file": "profile.json",
            "sha256": ...}`` (checked like the model), or None (no quality checks or drift).
        uncertainty_band: ``[low, high]``: binary models abstain when P(positive) is inside it,
            others when the top probability is; None: never for uncertainty.
        field_of_view: microns per pixel and size of the training images, when known;
            slide tiling uses it to cut tiles of the same physical size (None: unknown).
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
    profile: dict[str, str] | None = None
    uncertainty_band: tuple[float, float] | None = None
    field_of_view: FieldOfView | None = None

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) the model expects, read from the ``image`` input."""
        spec = self.input(IMAGE)
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
        data["field_of_view"] = None if self.field_of_view is None else self.field_of_view.to_dict()
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
                profile=None if data.get("profile") is None else {
                    str(k): str(v) for k, v in dict(data["profile"]).items()},
                uncertainty_band=None if data.get("uncertainty_band") is None else _band(data["uncertainty_band"]),
                field_of_view=FieldOfView.from_dict(data.get("field_of_view")),
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


def _band(value: Any) -> tuple[float, float]:
    low, high = (float(v) for v in value)
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"uncertainty_band {[low, high]} must satisfy 0 <= low <= high <= 1")
    return low, high


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_manifest(*, name: str, version: int, image_size: int, classes: Sequence[str],
                   members: Sequence[str], sha256: str, precision: str = "fp32",
                   threshold: float | None = None, positive_class: int | None = None,
                   metrics: dict[str, Any] | None = None, source: str = "",
                   extra: dict[str, Any] | None = None,
                   field_of_view: FieldOfView | None = None,
                   stain: dict[str, Any] | None = None) -> Manifest:
    """The manifest of an ensemble graph that follows the contract (square RGB input).

    Args:
        image_size: side of the square ``image`` input.
        classes, members: column order of ``probabilities`` and row order of
            ``member_probabilities``.
        sha256: digest of ``model.onnx`` (:func:`sha256_file`).
        threshold, positive_class: binary decision rule, or None for arg-max.
        field_of_view: the training images' pixel size and size, when known.
        stain: the fitted stain-normalisation reference (``StainReference.to_dict()`` of
            ``export/stain.py``), stored as ``preprocessing.stain_normalisation``; the server
            normalises every image with it.  None: no normalisation (the key is left out).

    Example::

        manifest = build_manifest(name="breast", version=3, image_size=64,
                                  classes=("benign", "malignant"), members=("a", "b"),
                                  sha256=sha256_file(path), threshold=0.4, positive_class=1)
    """
    classes, members = tuple(classes), tuple(members)
    c, m = len(classes), len(members)
    preprocessing = {"color": "RGB", "resize": [image_size, image_size], "interpolation": "area",
                     "scaling": "in-graph"}
    if stain is not None:
        preprocessing[STAIN_KEY] = dict(stain)
    return Manifest(
        name=name, version=int(version),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        inputs=(TensorSpec(IMAGE, "UINT8", (-1, image_size, image_size, 3)),),
        outputs=(TensorSpec(PROBABILITIES, "FP32", (-1, c)),
                 TensorSpec(MEMBER_PROBABILITIES, "FP32", (-1, m, c))),
        classes=classes, threshold=threshold, positive_class=positive_class,
        preprocessing=preprocessing,
        precision=precision, members=members, sha256=sha256, metrics=dict(metrics or {}),
        source=source, toolkit_version=histoedge.__version__, extra=dict(extra or {}),
        field_of_view=field_of_view)
