"""Check an exported version: checksum, onnxruntime load, tensor contract and a test batch.

Also holds the small onnxruntime helpers the export uses (sessions, batched inference,
latency measurement), so that all of them load models the same way.

Example::

    report = verify_version(Path("models/breast/3"))
    print(report.summary())
    assert report.ok
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histoedge.export import signing
from histoedge.export.errors import SignatureError
from histoedge.export.manifest import (IMAGE, MEMBER_PROBABILITIES, MODEL_FILE, PROBABILITIES, Manifest,
                                       ManifestError)
from histoedge.export.repository import ExportError

_ORT_TYPES = {"UINT8": "tensor(uint8)", "FP32": "tensor(float)", "FP16": "tensor(float16)",
              "INT64": "tensor(int64)", "BYTES": "tensor(string)"}


def make_session(model, threads: int = 2):
    """An onnxruntime CPU session for a path, serialized bytes or an ``onnx.ModelProto``."""
    import onnxruntime as ort  # noqa: PLC0415

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    elif isinstance(model, Path):
        model = str(model)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def predict(session, images: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N, C], member_probabilities [N, M, C]) for uint8 images."""
    probs, members = [], []
    for start in range(0, len(images), batch_size):
        p, m = session.run([PROBABILITIES, MEMBER_PROBABILITIES],
                           {IMAGE: np.ascontiguousarray(images[start:start + batch_size])})
        probs.append(p)
        members.append(m)
    return np.concatenate(probs), np.concatenate(members)


def measure_latency(session, image_size: int, batch_sizes: tuple[int, ...] = (1, 16),
                    repeats: int = 10, seed: int = 0) -> dict[str, float]:
    """Median wall-clock milliseconds per call at each batch size (after one warm-up)."""
    rng = np.random.default_rng(seed)
    result = {}
    for batch in batch_sizes:
        images = rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8)
        session.run(None, {IMAGE: images})
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(None, {IMAGE: images})
            times.append((time.perf_counter() - start) * 1000.0)
        result[f"batch_{batch}_ms"] = round(float(np.median(times)), 3)
    return result


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_version`: one line per check."""

    path: Path
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(passed for _, passed, _ in self.checks)

    def add(self, name: str, passed: bool, detail: str = "") -> bool:
        self.checks.append((name, bool(passed), detail))
        return bool(passed)

    def summary(self) -> str:
        lines = [f"{'ok  ' if passed else 'FAIL'} {name}{': ' + detail if detail else ''}"
                 for name, passed, detail in self.checks]
        lines.append(f"{self.path}: {'OK' if self.ok else 'FAILED'}")
        return "\n".join(lines)


def verify_version(version_dir: Path, batch_size: int = 4, tolerance: float = 1e-3,
                   trusted_keys: Path | None = None) -> VerifyReport:
    """Run every check on ``version_dir``; never raises for a broken package, reports instead.

    With ``trusted_keys`` (a folder of ``*.pub``) the package must be signed by one of them;
    without, a signature that is present is reported but not checked.
    """
    version_dir = Path(version_dir)
    report = VerifyReport(version_dir)
    if not (version_dir / MODEL_FILE).is_file():
        raise ExportError(f"{version_dir} has no {MODEL_FILE}")
    _check_signature(report, version_dir, trusted_keys)
    try:
        manifest = Manifest.load(version_dir)
    except ManifestError as error:
        report.add("manifest", False, str(error))
        return report
    report.add("manifest", True, f"{manifest.name} v{manifest.version} {manifest.precision}, "
                                 f"classes {list(manifest.classes)}, members {list(manifest.members)}")
    report.add("directory", version_dir.name == str(manifest.version)
               and version_dir.parent.name == manifest.name,
               f"{version_dir.parent.name}/{version_dir.name} vs {manifest.name}/{manifest.version}")
    try:
        manifest.check_checksum(version_dir)
        report.add("sha256", True, manifest.sha256[:16])
    except ManifestError as error:
        report.add("sha256", False, str(error))
        return report
    try:
        session = make_session(version_dir / MODEL_FILE)
    except Exception as error:  # onnxruntime raises its own exception types
        report.add("onnxruntime load", False, str(error).splitlines()[0])
        return report
    report.add("onnxruntime load", True, ", ".join(session.get_providers()))
    _check_profile(report, manifest, version_dir)
    _check_tensors(report, manifest, session)
    if report.ok:
        _check_batch(report, manifest, session, batch_size, tolerance)
    _check_metadata(report, manifest, session)
    return report


def _check_profile(report: VerifyReport, manifest: Manifest, version_dir: Path) -> None:
    from histoedge.serving.monitoring.profile import ProfileError, load_profile  # noqa: PLC0415

    if manifest.profile is None:
        report.add("reference profile", True, "none (no quality checks or drift in the server)")
        return
    try:
        profile = load_profile(version_dir, manifest.profile)
        report.add("reference profile", True, f"{manifest.profile.get('file')}: {len(profile.features)} "
                                              f"features, {len(profile.checks)} checks")
    except ProfileError as error:
        report.add("reference profile", False, str(error))


def _check_signature(report: VerifyReport, version_dir: Path, trusted_keys: Path | None) -> None:
    if trusted_keys is not None:
        try:
            verified = signing.verify_signature(version_dir, signing.load_trusted_keys(trusted_keys))
            report.add("signature", True, f"Ed25519, trusted key {verified.key_id}")
        except SignatureError as error:
            report.add("signature", False, str(error))
    elif (version_dir / signing.SIGNATURE_FILE).is_file():
        report.add("signature", True, f"{signing.SIGNATURE_FILE} present, not checked (give --trusted-keys)")


def _check_tensors(report: VerifyReport, manifest: Manifest, session) -> None:
    for kind, specs, actual in (("input", manifest.inputs, session.get_inputs()),
                                ("output", manifest.outputs, session.get_outputs())):
        found = {a.name: a for a in actual}
        for spec in specs:
            arg = found.get(spec.name)
            if arg is None:
                report.add(f"{kind} {spec.name}", False, f"missing from model (has {sorted(found)})")
                continue
            shape = [d if isinstance(d, int) else -1 for d in arg.shape]
            same = (_ORT_TYPES.get(spec.datatype) == arg.type and shape == list(spec.shape))
            report.add(f"{kind} {spec.name}", same,
                       f"{arg.type} {shape}" + ("" if same else f" vs manifest {spec.datatype} {list(spec.shape)}"))


def _check_batch(report, manifest: Manifest, session, batch_size: int, tolerance: float) -> None:
    height, width = manifest.image_size
    images = np.random.default_rng(0).integers(0, 256, (batch_size, height, width, 3), dtype=np.uint8)
    names = [spec.name for spec in manifest.outputs]
    try:
        outputs = dict(zip(names, session.run(names, {IMAGE: images})))
    except Exception as error:  # onnxruntime raises its own exception types
        report.add("test batch", False, str(error).splitlines()[0])
        return
    c, m = len(manifest.classes), len(manifest.members)
    expected = {PROBABILITIES: (batch_size, c), MEMBER_PROBABILITIES: (batch_size, m, c)}
    for name, array in outputs.items():
        want = expected.get(name)
        report.add(f"{name} shape", want is None or array.shape == want,
                   f"{array.shape} (batch {batch_size})")
        report.add(f"{name} dtype", array.dtype == np.float32, str(array.dtype))
        finite = bool(np.isfinite(array).all())
        sums = array.sum(axis=-1)
        report.add(f"{name} sums to 1", finite and np.abs(sums - 1).max() <= tolerance,
                   f"max |sum-1| {np.abs(sums - 1).max():.2e}" if finite else "non-finite values")


def _check_metadata(report: VerifyReport, manifest: Manifest, session) -> None:
    meta = session.get_modelmeta().custom_metadata_map
    try:
        classes = json.loads(meta.get("classes", "null"))
    except json.JSONDecodeError:
        classes = None
    same = (meta.get("name") == manifest.name and meta.get("version") == str(manifest.version)
            and classes == list(manifest.classes) and meta.get("precision") == manifest.precision)
    report.add("onnx metadata", same, "name, version, classes, precision match the manifest"
               if same else f"model metadata {dict(meta)}")


def cli_verify(args) -> int:
    """``histoedge export verify DIR``: print the checks, exit 1 if any failed."""
    trusted = Path(args.trusted_keys) if getattr(args, "trusted_keys", None) else None
    report = verify_version(Path(args.path), batch_size=args.batch_size, trusted_keys=trusted)
    print(report.summary())
    return 0 if report.ok else 1
