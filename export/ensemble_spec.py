"""``ensemble.json``: how the members' probabilities combine into the ensemble's.

Training writes the file (:mod:`histoedge.training.ensemble`), the export reads it to
build the meta-learner into the ONNX graph (:mod:`histoedge.export.graph`); both read
and check it here, and both compute the meta-learner with :meth:`EnsembleSpec.combine`.
The module imports only the standard library (numpy is imported by ``combine``).

The file::

    {"method": "stacking" | "soft_vote" | "single",
     "members": [recipe names, in the order of the member axis],
     "classes": [class names, in column order], "image_size": side of the square input,
     "positive_class": 1 | null, "threshold": P(positive) cut-off | null,
     "target_sensitivity": validation sensitivity the threshold was chosen for,
     "stacking": {"coef": [[...]], "intercept": [...], "multi_class": "binary" | "multinomial"},
     "soft_vote": {"weights": [...]}}

The arithmetic, on member probabilities ``p`` [N, M, C]:

- ``stacking``: features ``X = p.reshape(N, M*C)`` (member-major); two classes:
  ``P(1) = sigmoid(X @ coef[0] + intercept[0])``, ``P(0) = 1 - P(1)``; more classes:
  ``softmax(X @ coef.T + intercept)``.  ``coef`` is [1, M*C] or [C, M*C].
- ``soft_vote``: ``sum_m weights[m] * p[:, m]`` (uniform weights when none are given).
- ``single``: ``p[:, 0]``.

Example::

    spec = EnsembleSpec.load(Path("run/ensemble.json"))
    probabilities = spec.combine(member_probabilities)     # [N, M, C] -> [N, C]
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histoedge.export.errors import EnsembleSpecError

ENSEMBLE_FILE = "ensemble.json"
METHODS = ("stacking", "soft_vote", "single")
REQUIRED = ("method", "members", "classes", "image_size")


@dataclass(frozen=True)
class EnsembleSpec:
    """The checked contents of ``ensemble.json`` (see the module docstring).

    Build with :meth:`from_dict` or :meth:`load`, which check every field.
    """

    method: str
    members: tuple[str, ...]
    classes: tuple[str, ...]
    image_size: int
    positive_class: int | None = None
    threshold: float | None = None
    target_sensitivity: float | None = None
    stacking: dict[str, Any] = field(default_factory=dict)
    soft_vote: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EnsembleSpec":
        """Check and convert a parsed ``ensemble.json``; unknown keys are ignored."""
        if not isinstance(data, dict):
            raise EnsembleSpecError(f"{ENSEMBLE_FILE} must hold an object, not {type(data).__name__}")
        missing = [key for key in REQUIRED if key not in data]
        if missing:
            raise EnsembleSpecError(f"{ENSEMBLE_FILE} lacks {missing}")
        if data["method"] not in METHODS:
            raise EnsembleSpecError(f"ensemble method {data['method']!r} is not one of {METHODS}")
        try:
            spec = cls(method=str(data["method"]), members=tuple(str(m) for m in data["members"]),
                       classes=tuple(str(c) for c in data["classes"]), image_size=int(data["image_size"]),
                       positive_class=_optional(int, data.get("positive_class")),
                       threshold=_optional(float, data.get("threshold")),
                       target_sensitivity=_optional(float, data.get("target_sensitivity")),
                       stacking=dict(data.get("stacking") or {}), soft_vote=dict(data.get("soft_vote") or {}))
        except (TypeError, ValueError) as error:
            raise EnsembleSpecError(f"malformed {ENSEMBLE_FILE}: {error!r}") from error
        spec.validate()
        return spec

    @classmethod
    def load(cls, path: Path) -> "EnsembleSpec":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as error:
            raise EnsembleSpecError(f"cannot read {path}: {error}") from error

    @property
    def n_members(self) -> int:
        return len(self.members)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def validate(self) -> None:
        """Raise :class:`EnsembleSpecError` unless every field fits the others."""
        m, c = self.n_members, self.n_classes
        if m < 1 or c < 2:
            raise EnsembleSpecError(f"ensemble needs >= 1 member and >= 2 classes, got {m} and {c}")
        if self.image_size < 1:
            raise EnsembleSpecError(f"image_size must be positive, got {self.image_size}")
        if self.positive_class is not None and not 0 <= self.positive_class < c:
            raise EnsembleSpecError(f"positive_class {self.positive_class} is not a class index (0..{c - 1})")
        if self.method == "single" and m != 1:
            raise EnsembleSpecError(f"method 'single' needs one member, got {m}")
        if self.method == "stacking":
            coef, intercept = self.stacking_coef(), self.stacking_intercept()
            rows = 1 if c == 2 else c
            if len(coef) != rows or any(len(row) != m * c for row in coef) or len(intercept) != rows:
                raise EnsembleSpecError(
                    f"stacking coef {len(coef)}x{len(coef[0]) if coef else 0} / intercept {len(intercept)} "
                    f"do not fit {m} members x {c} classes")
            expected = "binary" if c == 2 else "multinomial"
            if self.stacking.get("multi_class", expected) != expected:
                raise EnsembleSpecError(f"stacking multi_class {self.stacking['multi_class']!r} does not "
                                        f"fit {c} classes (expected {expected!r})")
        if self.method == "soft_vote" and len(self.vote_weights()) != m:
            raise EnsembleSpecError(f"soft_vote weights must have {m} entries")

    def stacking_coef(self) -> list[list[float]]:
        """Stacking weights, one row per logit ([1, M*C] for two classes, else [C, M*C])."""
        coef = self.stacking.get("coef")
        if coef and not isinstance(coef[0], (list, tuple)):
            coef = [coef]  # a single row written flat
        return [_floats(row, "stacking.coef") for row in coef or []]

    def stacking_intercept(self) -> list[float]:
        intercept = self.stacking.get("intercept")
        return _floats([intercept] if isinstance(intercept, (int, float)) else intercept or [],
                       "stacking.intercept")

    def vote_weights(self) -> list[float]:
        """Soft-vote weights, uniform when the file gives none."""
        weights = self.soft_vote.get("weights")
        if weights is None:
            return [1.0 / self.n_members] * self.n_members
        return _floats(weights, "soft_vote.weights")

    def combine(self, member_probabilities):
        """The meta-learner in numpy: member probabilities [N, M, C] -> probabilities [N, C] (float64)."""
        import numpy as np  # noqa: PLC0415 - keeps this module importable with the standard library

        p = np.asarray(member_probabilities, dtype=np.float64)
        if p.ndim != 3 or p.shape[1:] != (self.n_members, self.n_classes):
            raise EnsembleSpecError(f"expected member probabilities [N, {self.n_members}, "
                                    f"{self.n_classes}], got {list(p.shape)}")
        if self.method == "single":
            return p[:, 0]
        if self.method == "soft_vote":
            return np.einsum("nmc,m->nc", p, np.asarray(self.vote_weights()))
        logits = p.reshape(len(p), -1) @ np.asarray(self.stacking_coef()).T + np.asarray(self.stacking_intercept())
        if self.n_classes == 2:
            positive = 1.0 / (1.0 + np.exp(-logits[:, 0]))
            return np.stack([1.0 - positive, positive], axis=1)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)


def _optional(convert, value):
    return None if value is None else convert(value)


def _floats(values, name: str) -> list[float]:
    try:
        result = [float(v) for v in values]
    except (TypeError, ValueError) as error:
        raise EnsembleSpecError(f"{ENSEMBLE_FILE} {name} must be numbers: {error!r}") from error
    if not all(math.isfinite(v) for v in result):
        raise EnsembleSpecError(f"{ENSEMBLE_FILE} {name} holds a non-finite number")
    return result
