"""Export a training run (or one Keras model) into the model repository as one ONNX graph.

Steps: convert every member with tf2onnx, merge members and meta-learner into one graph,
check fp32 parity against Keras + the numpy meta-learner, measure test metrics, quantise
if asked (refusing an int8 model that loses more than ``max_auc_drop`` ROC-AUC), measure
latency, then publish ``MODELS/<name>/<version>/`` atomically.

Example::

    manifest = export_run(Path("runs/r1"), Path("models"), "breast",
                          options=ExportOptions(precision="int8"))
    manifest = export_keras(Path("my.h5"), ("benign", "malignant"), Path("models"), "mine")
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import histoedge
from histoedge.export import data
from histoedge.export.convert import DEFAULT_OPSET, KerasMember, convert_member, has_rescaling, load_keras_model
from histoedge.export.ensemble_spec import ENSEMBLE_FILE, EnsembleSpec
from histoedge.export.graph import build_ensemble_model, set_metadata
from histoedge.export.manifest import MODEL_FILE, MANIFEST_FILE, FieldOfView, Manifest, build_manifest, sha256_file
from histoedge.export.fov import field_of_view, run_field_of_view
from histoedge.export.quantize import INT8_DEFAULT, Int8Settings, convert_fp16, quantize_int8
from histoedge.export.repository import ExportError, VersionWriter
from histoedge.export.signing import load_private_key, sign_version
from histoedge.export.stain import StainError, StainReference, load_run_reference
from histoedge.export.verify import make_session, measure_latency, predict
from histoedge.serving.monitoring.features import image_features
from histoedge.serving.monitoring.profile import PROFILE_FILE, build_profile, file_reference, uncertainty_band

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8", "fp16")
STUDENT = "student"  # RUN/student/, written by histoedge.training.distill (which imports TensorFlow)


@dataclass(frozen=True)
class ExportOptions:
    """How to export.

    Args:
        precision: ``fp32``, ``int8`` or ``fp16``.
        calibration_images: at most this many training images calibrate int8.
        force: publish an int8 model even if it loses more than ``max_auc_drop`` ROC-AUC.
        max_auc_drop: largest accepted fp32 - int8 test ROC-AUC difference.
        opset: ONNX opset used for every member.
        parity_images: images for the fp32 parity check against Keras.
        parity_tolerance: largest accepted absolute difference in probabilities.
        int8: quantisation settings.
        latency_threads: onnxruntime threads when measuring latency.
        profile_images: at most this many training images go into the reference profile
            (plus every validation image).
        uncertain_fraction: share of validation images inside the uncertainty band.
        mpp: microns per pixel of the training images (``--mpp``); None: what the
            dataset declares in ``histoedge-dataset.json``, if anything.
        signing_key: an Ed25519 private key (``signing.load_private_key``); the version is
            published with ``manifest.sig`` beside its manifest.
    """

    precision: str = "fp32"
    calibration_images: int = 200
    force: bool = False
    max_auc_drop: float = 0.01
    opset: int = DEFAULT_OPSET
    parity_images: int = 64
    parity_tolerance: float = 1e-4
    int8: Int8Settings = field(default_factory=lambda: INT8_DEFAULT)
    latency_threads: int = 2
    profile_images: int = 1000
    uncertain_fraction: float = 0.1
    mpp: float | None = None
    signing_key: Any = None

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ExportError(f"precision {self.precision!r} is not one of {PRECISIONS}")
        if self.calibration_images < 1:
            raise ExportError("--calibration-images must be at least 1")


@dataclass
class ExportSource:
    """Everything an export needs to know about where the model comes from."""

    members: list[KerasMember]
    spec: EnsembleSpec
    description: str
    source_hashes: dict[str, str]
    test_images: np.ndarray
    test_labels: np.ndarray
    parity_images: np.ndarray
    calibration: Any  # callable(limit) -> uint8 images, evaluated only for int8
    notes: dict[str, Any] = field(default_factory=dict)
    # callable(limit) -> (images for features, labelled validation images or None,
    # width/height of the original files or None); None: no reference profile
    reference: Any = None
    field_of_view: FieldOfView | None = None
    stain: StainReference | None = None  # images below are already normalised with it


def export_run(run_dir: Path, repo: Path, name: str, version: int | None = None,
               options: ExportOptions | None = None, *, student: bool = False) -> Manifest:
    """Export the ensemble of a training run directory (see the shared brief's layout).

    With ``student``, export the run's distilled student (``RUN/student/``, from
    ``histoedge train --distill``) instead: a single-member model with the student's own
    validation threshold and the same graph contract.
    """
    options = options or ExportOptions()
    run_dir = Path(run_dir)
    spec_path = run_dir / ENSEMBLE_FILE
    if not spec_path.is_file():
        raise ExportError(f"{run_dir} has no {ENSEMBLE_FILE}; is it a finished training run?")
    spec = EnsembleSpec.load(spec_path)
    writer = VersionWriter(repo, name, version)  # fail fast on an existing version
    paths = [run_dir / "members" / member / "model.keras" for member in spec.members]
    if student:
        spec, paths, spec_path = _student_spec(run_dir, spec), [run_dir / STUDENT / "model.keras"], \
            run_dir / STUDENT / "metrics.json"
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ExportError(f"member models missing: {', '.join(missing)}")
    splits = run_dir / "splits.csv"
    size, classes = spec.image_size, spec.classes
    try:
        stain = load_run_reference(run_dir)
    except StainError as error:
        raise ExportError(str(error)) from None

    def normalised(images):  # the members saw normalised images in training; so does every check here
        return images if stain is None else stain.normalise_batch(images)[0]

    test_images, test_labels = data.split_images(splits, "test", size, classes)
    test_images = normalised(test_images)
    parity = test_images[:options.parity_images]
    for fallback in ("val", "train"):  # too few test images: top up from other splits
        if len(parity) < options.parity_images:
            extra, _ = data.split_images(splits, fallback, size, classes, limit=options.parity_images)
            parity = np.concatenate([parity, normalised(extra)])[:options.parity_images]
    hashes = {str(p.relative_to(run_dir)): sha256_file(p) for p in [spec_path, *paths]}
    source = ExportSource(
        members=[KerasMember(load_keras_model(p)) for p in paths], spec=spec,
        description=str(run_dir.resolve()), source_hashes=hashes,
        test_images=test_images, test_labels=test_labels, parity_images=parity,
        calibration=lambda limit: normalised(data.split_images(splits, "train", size, classes, limit=limit)[0]),
        reference=lambda limit: _run_reference(splits, size, classes, limit, normalised),
        field_of_view=run_field_of_view(run_dir, options.mpp, size), stain=stain)
    return _export(source, writer, options)


def _run_reference(splits: Path, size: int, classes: tuple[str, ...], limit: int, normalised=lambda x: x):
    """Training (up to ``limit``) and validation images, and the files' aspect ratios.

    The images pass through ``normalised`` (the run's stain normalisation) because the server
    computes its quality features and predictions on the pixels after its own normalisation: a
    profile of raw pixels would flag every request of a normalising model as drifted.
    """
    train, _ = data.split_images(splits, "train", size, classes, limit=limit)
    val, _ = data.split_images(splits, "val", size, classes)
    rows = [r for r in data.read_splits(splits) if r["split"] in ("train", "val")]
    train, val = normalised(train), normalised(val)
    return np.concatenate([train, val]), val, data.aspect_ratios([Path(r["path"]) for r in rows])


def _student_spec(run_dir: Path, ensemble: EnsembleSpec) -> EnsembleSpec:
    """The student as a single-member spec: the run's classes and size, the student's threshold."""
    import json  # noqa: PLC0415

    path = run_dir / STUDENT / "metrics.json"
    if not path.is_file():
        raise ExportError(f"{run_dir} has no distilled student ({path} is missing); "
                          "train one with 'histoedge train --ensemble --distill'")
    try:
        threshold = json.loads(path.read_text())["threshold"]
    except (ValueError, KeyError, TypeError) as error:
        raise ExportError(f"cannot read the student's threshold from {path}: {error}") from None
    return EnsembleSpec(method="single", members=(STUDENT,), classes=ensemble.classes,
                        image_size=ensemble.image_size, positive_class=ensemble.positive_class,
                        threshold=None if threshold is None else float(threshold),
                        target_sensitivity=ensemble.target_sensitivity)


def export_keras(model_path: Path, classes: tuple[str, ...], repo: Path, name: str,
                 version: int | None = None, data_dir: Path | None = None,
                 calibration_dir: Path | None = None, input_scale: float | None = None,
                 options: ExportOptions | None = None) -> Manifest:
    """Export one Keras model (.keras, .h5 or SavedModel directory) as a single-member model.

    Args:
        classes: class names in the model's output column order.
        data_dir: optional labelled ImageFolder (one sub-folder per class) for test
            metrics; also calibrates int8 when ``calibration_dir`` is not given.
        calibration_dir: folder of images (any layout) to calibrate int8.
        input_scale: factor from 0..255 pixels to what the model expects; ``None``
            detects a Rescaling layer (scale 1) and otherwise assumes 0..1 (1/255).
    """
    options = options or ExportOptions()
    model_path = Path(model_path)
    classes = tuple(classes)
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ExportError(f"--classes needs at least two distinct names, got {list(classes)}")
    writer = VersionWriter(repo, name, version)
    model = load_keras_model(model_path)
    rescales = has_rescaling(model)
    scale = input_scale if input_scale is not None else (1.0 if rescales else 1.0 / 255.0)
    probe = KerasMember(model)
    width = probe.output_width
    sigmoid = width == 1
    if sigmoid and len(classes) != 2:
        raise ExportError(f"the model has one (sigmoid) output but {len(classes)} classes were given")
    if not sigmoid and width != len(classes):
        raise ExportError(f"the model outputs {width} columns but {len(classes)} classes were given")
    height, img_width, _ = probe.input_shape
    if height != img_width:
        raise ExportError(f"only square inputs are supported, the model takes {height}x{img_width}")
    binary = len(classes) == 2
    spec = EnsembleSpec(method="single", members=(_member_name(model_path),), classes=classes,
                        image_size=height, positive_class=1 if binary else None,
                        threshold=0.5 if binary else None)
    if data_dir is not None:
        test_images, test_labels = data.image_folder(data_dir, height, classes)
    else:
        test_images, test_labels = np.zeros((0, height, height, 3), np.uint8), np.zeros(0, np.int64)
    rng = np.random.default_rng(0)
    parity = test_images[:options.parity_images]
    if len(parity) < options.parity_images:
        noise = rng.integers(0, 256, (options.parity_images - len(parity), height, height, 3), np.uint8)
        parity = np.concatenate([parity, noise])
    calibration_source = calibration_dir or data_dir
    if options.precision == "int8" and calibration_source is None:
        raise ExportError("int8 export of a Keras model needs --calibration-dir (or --data) "
                          "with representative images")
    hashed = model_path if model_path.is_file() else model_path / "saved_model.pb"
    hashes = {hashed.name: sha256_file(hashed)}
    source = ExportSource(
        members=[KerasMember(model, input_scale=scale, sigmoid_to_two=sigmoid)], spec=spec,
        description=str(model_path.resolve()), source_hashes=hashes,
        test_images=test_images, test_labels=test_labels, parity_images=parity,
        calibration=lambda limit: data.folder_images(Path(calibration_source), height, limit=limit),
        notes={"input_scale": scale, "rescaling_layer_detected": rescales,
               "sigmoid_output_expanded": sigmoid},
        reference=None if calibration_source is None else lambda limit: _folder_reference(
            Path(calibration_source), height, limit, test_images),
        field_of_view=field_of_view(options.mpp, data_dir, data.image_paths(data_dir)[:5] if data_dir else [],
                                    height))
    return _export(source, writer, options)


def _folder_reference(folder: Path, size: int, limit: int, labelled: np.ndarray):
    images = data.folder_images(folder, size, limit=limit)
    predicted = labelled if len(labelled) else images
    return images, predicted, data.aspect_ratios(data.image_paths(folder)[:limit])


def _write_profile(source: ExportSource, writer: VersionWriter, session, options: ExportOptions):
    """Write the reference profile; return (manifest reference, uncertainty band) or (None, None)."""
    if source.reference is None:
        log.warning("no reference images: the model package gets no profile (no quality checks or drift)")
        return None, None
    images, validation, ratios = source.reference(options.profile_images)
    if len(images) < 2:
        log.warning("fewer than 2 reference images: no profile")
        return None, None
    spec = source.spec
    probabilities = predict(session, validation)[0] if len(validation) else None
    positive = spec.positive_class if spec.n_classes == 2 else None
    profile = build_profile(image_features(images), probabilities, positive, ratios)
    band = None if probabilities is None else uncertainty_band(
        probabilities, spec.threshold if positive is not None else None, positive, options.uncertain_fraction)
    path = writer.write_text(PROFILE_FILE, profile.to_json())
    log.info("reference profile of %d images (%d validation predictions); uncertainty band %s",
             len(images), 0 if probabilities is None else len(probabilities), band)
    return file_reference(path), band


def _export(source: ExportSource, writer: VersionWriter, options: ExportOptions) -> Manifest:
    spec = source.spec
    with writer:
        log.info("converting %d member(s) at opset %d", spec.n_members, options.opset)
        converted = [convert_member(member, options.opset) for member in source.members]
        metadata = _metadata(source, writer, options)
        fp32 = build_ensemble_model(converted, spec, metadata)
        fp32_session = make_session(fp32, options.latency_threads)
        parity = _check_parity(source, fp32_session, options.parity_tolerance)
        metrics = {"split": "test", "fp32": _metrics(source, fp32_session)}
        latency = {"fp32": measure_latency(fp32_session, spec.image_size)}
        model, extra = fp32, {}
        if options.precision == "int8":
            images = source.calibration(options.calibration_images)
            log.info("calibrating int8 on %d images (%s)", len(images), options.int8.label())
            model = quantize_int8(fp32, images, options.int8)
            extra = {"int8_settings": options.int8.get_config(), "calibration_images": int(len(images))}
        elif options.precision == "fp16":
            model = build_ensemble_model([convert_fp16(m) for m in converted], spec, metadata)
        if options.precision != "fp32":
            session = make_session(model, options.latency_threads)
            metrics[options.precision] = _metrics(source, session)
            latency[options.precision] = measure_latency(session, spec.image_size)
            if options.precision == "int8":
                _check_auc_drop(metrics, options)
        metadata["precision"] = options.precision
        set_metadata(model, metadata)
        model_bytes = model.SerializeToString()
        path = writer.write_bytes(MODEL_FILE, model_bytes)
        profile, band = _write_profile(source, writer, make_session(model_bytes, options.latency_threads),
                                       options)
        manifest = _manifest(source, writer, options, sha256_file(path), metrics, {
            "opset": options.opset, "ensemble_method": spec.method, "parity_max_abs_diff": parity,
            "latency_ms": latency, "latency_threads": options.latency_threads,
            "source_sha256": source.source_hashes, **source.notes, **extra})
        manifest = dataclasses.replace(manifest, profile=profile, uncertainty_band=band)
        writer.write_text(MANIFEST_FILE, manifest.to_json())
        if options.signing_key is not None:
            sign_version(writer.path, options.signing_key)
    log.info("exported %s (%s, %.1f MB)", writer.final_path, options.precision, len(model_bytes) / 1e6)
    return manifest


def _check_parity(source: ExportSource, session, tolerance: float) -> float:
    images = source.parity_images
    keras_members = np.stack([member.predict(images) for member in source.members], axis=1)  # [N, M, C]
    expected = source.spec.combine(keras_members)
    probabilities, members = predict(session, images)
    diff = float(max(np.abs(members - keras_members).max(), np.abs(probabilities - expected).max()))
    log.info("fp32 parity on %d images: max abs diff %.2e", len(images), diff)
    if not diff <= tolerance:
        raise ExportError(f"the ONNX graph differs from Keras by {diff:.2e} (> {tolerance:g}) "
                          f"on {len(images)} images; nothing was written")
    return diff


def _metrics(source: ExportSource, session) -> dict[str, Any]:
    if len(source.test_labels) == 0:
        return {}
    probabilities, _ = predict(session, source.test_images)
    return data.classification_metrics(probabilities, source.test_labels,
                                       source.spec.threshold, source.spec.positive_class)


def _check_auc_drop(metrics: dict[str, Any], options: ExportOptions) -> None:
    fp32_auc, int8_auc = metrics["fp32"].get("roc_auc"), metrics["int8"].get("roc_auc")
    if fp32_auc is None or int8_auc is None:
        log.warning("test ROC-AUC unavailable; int8 accuracy was not checked")
        return
    drop = fp32_auc - int8_auc
    if drop > options.max_auc_drop:
        message = (f"int8 test ROC-AUC {int8_auc:.4f} is {drop:.4f} below fp32 {fp32_auc:.4f} "
                   f"(more than {options.max_auc_drop}); ")
        if not options.force:
            raise ExportError(message + "nothing was written (use --force to export anyway)")
        log.warning("%s exporting anyway because of --force", message)


def _metadata(source: ExportSource, writer: VersionWriter, options: ExportOptions) -> dict[str, Any]:
    spec = source.spec
    return {"name": writer.model_dir.name, "version": str(writer.version), "classes": list(spec.classes),
            "members": list(spec.members), "threshold": spec.threshold,
            "positive_class": spec.positive_class, "precision": "fp32", "ensemble_method": spec.method,
            "source": source.description, "source_sha256": source.source_hashes,
            "toolkit_version": histoedge.__version__, "opset": str(options.opset)}


def _manifest(source: ExportSource, writer: VersionWriter, options: ExportOptions, sha256: str,
              metrics: dict[str, Any], extra: dict[str, Any]) -> Manifest:
    spec = source.spec
    return build_manifest(
        name=writer.model_dir.name, version=writer.version, image_size=spec.image_size,
        classes=spec.classes, members=spec.members, sha256=sha256, precision=options.precision,
        threshold=spec.threshold, positive_class=spec.positive_class, metrics=metrics,
        source=source.description, extra=extra, field_of_view=source.field_of_view,
        stain=None if source.stain is None else source.stain.to_dict())


def _member_name(path: Path) -> str:
    return path.name.split(".")[0] or "model"


def cli_export(args) -> int:
    """``histoedge export --run RUN ...`` or ``histoedge export --keras MODEL ...``."""
    if getattr(args, "student", False) and not args.run:
        raise ExportError("--student exports a training run's student: give --run RUN")
    if bool(args.run) == bool(args.keras):
        raise ExportError("give exactly one of --run RUN or --keras MODEL "
                          "(or use 'histoedge export verify DIR')")
    if not args.repo or not args.name:
        raise ExportError("--repo and --name are required")
    signing_key = load_private_key(Path(args.sign)) if args.sign else None  # fail before the work
    options = ExportOptions(precision=args.precision, calibration_images=args.calibration_images,
                            force=args.force, max_auc_drop=args.max_auc_drop, opset=args.opset,
                            mpp=getattr(args, "mpp", None), signing_key=signing_key)
    if args.run:
        manifest = export_run(Path(args.run), Path(args.repo), args.name, args.version, options,
                              student=getattr(args, "student", False))
    else:
        if not args.classes:
            raise ExportError("--keras needs --classes, e.g. --classes benign,malignant")
        classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
        manifest = export_keras(Path(args.keras), classes, Path(args.repo), args.name, args.version,
                                data_dir=_path(args.data), calibration_dir=_path(args.calibration_dir),
                                input_scale=args.input_scale, options=options)
    print(f"exported {Path(args.repo) / manifest.name / str(manifest.version)} "
          f"({manifest.precision}, {len(manifest.members)} member(s), classes {','.join(manifest.classes)})"
          + (", signed" if signing_key is not None else ""))
    fov = manifest.field_of_view
    print("  field of view: " + ("unknown (give --mpp to tile slides at the training resolution)"
                                 if fov is None else f"{fov.microns[1]:g} x {fov.microns[0]:g} um "
                                 f"({fov.image_size[1]}x{fov.image_size[0]} px at {fov.microns_per_pixel:g} um/px)"))
    for precision, values in manifest.metrics.items():
        if isinstance(values, dict) and values:
            print(f"  test {precision}: " + ", ".join(
                f"{k} {v:.4f}" for k, v in values.items() if isinstance(v, float)))
    for precision, values in manifest.extra["latency_ms"].items():
        print(f"  latency {precision}: " + ", ".join(f"{k} {v:.2f}" for k, v in values.items()))
    return 0


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None
