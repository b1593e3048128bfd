"""Tiny model packages for tests and demos, built with ``onnx.helper`` (no TensorFlow).

The graph follows the repository contract: ``image`` UINT8 [N, S, S, 3] ->
mean colour -> one linear+softmax head per "member" -> ``member_probabilities``
[N, M, C] and their average ``probabilities`` [N, C].

Example::

    path = write_model_version(Path("models"), "tiny", version=1)
    # models/tiny/1/model.onnx + manifest.json, ready for `histoedge serve --repo models`
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from histoedge.export.manifest import (IMAGE, MANIFEST_FILE, MEMBER_PROBABILITIES, MODEL_FILE, PROBABILITIES,
                                       build_manifest, sha256_file)


def tiny_model_bytes(size: int = 16, members: int = 2, classes: int = 2, seed: int = 0) -> bytes:
    """Serialised ONNX model of the contract's shape with weights drawn from ``seed``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Cast", [IMAGE], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["pixels"], ["mean"], axes=[1, 2], keepdims=0),
        helper.make_node("Mul", ["mean", "scale"], ["colour"]),
    ]
    initializers = [numpy_helper.from_array(np.array(1 / 255, dtype=np.float32), "scale")]
    member_outputs = []
    for m in range(members):
        weight = rng.normal(0, 6, size=(3, classes)).astype(np.float32)
        bias = rng.normal(0, 1, size=(classes,)).astype(np.float32)
        initializers += [numpy_helper.from_array(weight, f"w{m}"), numpy_helper.from_array(bias, f"b{m}")]
        nodes += [
            helper.make_node("MatMul", ["colour", f"w{m}"], [f"logits{m}_"]),
            helper.make_node("Add", [f"logits{m}_", f"b{m}"], [f"logits{m}"]),
            helper.make_node("Softmax", [f"logits{m}"], [f"p{m}"], axis=-1),
            helper.make_node("Unsqueeze", [f"p{m}", "axis1"], [f"p{m}_1"]),
        ]
        member_outputs.append(f"p{m}_1")
    initializers.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"))
    nodes += [
        helper.make_node("Concat", member_outputs, [MEMBER_PROBABILITIES], axis=1),
        helper.make_node("ReduceMean", [MEMBER_PROBABILITIES], [PROBABILITIES], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "tiny_ensemble",
        [helper.make_tensor_value_info(IMAGE, TensorProto.UINT8, ["N", size, size, 3])],
        [helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["N", classes]),
         helper.make_tensor_value_info(MEMBER_PROBABILITIES, TensorProto.FLOAT, ["N", members, classes])],
        initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_model_version(repo: Path, name: str = "tiny", version: int = 1, size: int = 16,
                        members: int = 2, classes: Sequence[str] = ("benign", "malignant"),
                        seed: int | None = None, threshold: float | None = 0.5,
                        model_bytes: bytes | None = None, profile_images: np.ndarray | None = None,
                        uncertainty_band: tuple[float, float] | None = None, stain: dict | None = None) -> Path:
    """Write ``repo/name/version`` atomically (temp folder, then rename) and return it.

    Args:
        seed: weight seed (default: the version, so versions differ).
        threshold: decision threshold for binary models (None: arg-max).
        model_bytes: use these bytes as model.onnx instead of a generated graph.
        profile_images: reference images [N, size, size, 3]: write a profile.json built from
            them (and the model's predictions on them), as the export does.
        uncertainty_band: the manifest's band (None: none).
        stain: a stain-normalisation reference (``StainReference.to_dict()``) for the manifest.
    """
    classes = tuple(classes)
    seed = version if seed is None else seed
    data = model_bytes if model_bytes is not None else tiny_model_bytes(size, members, len(classes), seed)
    final = Path(repo) / name / str(version)
    staging = Path(repo) / name / f".tmp-{version}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (staging / MODEL_FILE).write_bytes(data)
    binary = len(classes) == 2
    profile = None
    if profile_images is not None:
        import onnxruntime as ort

        from histoedge.serving.monitoring.features import image_features
        from histoedge.serving.monitoring.profile import PROFILE_FILE, build_profile, file_reference

        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        probabilities = session.run(["probabilities"], {"image": profile_images})[0]
        built = build_profile(image_features(profile_images), probabilities, 1 if binary else None)
        (staging / PROFILE_FILE).write_text(built.to_json())
        profile = file_reference(staging / PROFILE_FILE)
    manifest = build_manifest(
        name=name, version=version, image_size=size, classes=classes,
        members=tuple(f"member{m}" for m in range(members)), sha256=sha256_file(staging / MODEL_FILE),
        threshold=threshold if binary else None, positive_class=1 if binary else None,
        source="tests.support.model_packages", extra={"opset": 17}, stain=stain)
    manifest = dataclasses.replace(manifest, profile=profile, uncertainty_band=uncertainty_band)
    (staging / MANIFEST_FILE).write_text(manifest.to_json())
    os.rename(staging, final)
    return final
