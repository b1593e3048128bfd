"""Export-stage subcommands (argparse only at import time).

``histoedge export --run RUN ...`` and ``histoedge export --keras MODEL ...`` write a new
version into the model repository; ``histoedge export verify DIR`` checks one. ``verify``
is an optional sub-command of ``export``, so the export flags live on ``export`` itself.
"""

from __future__ import annotations

import argparse


def _scale(value: str) -> float:
    """Parse ``--input-scale``: ``1/255``, ``1`` or any positive number."""
    try:
        if "/" in value:
            numerator, denominator = value.split("/", 1)
            result = float(numerator) / float(denominator)
        else:
            result = float(value)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected 1/255 or 1, got {value!r}") from None
    if result <= 0:
        raise argparse.ArgumentTypeError(f"input scale must be positive, got {value!r}")
    return result


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export`` (with its ``verify`` sub-command); handlers are named as ``"module:function"``."""
    export = subparsers.add_parser(
        "export", help="export a run or a Keras model to ONNX in a model repository; verify one",
        description="Export a training run (--run) or one Keras model (--keras) as one ONNX graph "
                    "(uint8 image in, probabilities out) into MODELS/NAME/VERSION/, or check an "
                    "exported version with 'histoedge export verify MODELS/NAME/VERSION'.")
    source = export.add_argument_group("what to export (one of)")
    source.add_argument("--run", help="training run directory (members/, ensemble.json, splits.csv)")
    source.add_argument("--keras", metavar="MODEL",
                        help="a Keras model: .keras or .h5 file, or a SavedModel directory")
    source.add_argument("--student", action="store_true",
                        help="with --run: export the run's distilled student (histoedge train --distill) "
                             "instead of the ensemble")
    target = export.add_argument_group("where to write")
    target.add_argument("--repo", metavar="MODELS", help="model repository root (created if missing)")
    target.add_argument("--name", help="model name, the folder under MODELS")
    target.add_argument("--version", type=int,
                        help="version to write (default: next integer); never overwritten")
    how = export.add_argument_group("how")
    how.add_argument("--precision", choices=("fp32", "int8", "fp16"), default="fp32",
                     help="fp32 (default), int8 (static quantisation, CPU) or fp16 (GPU)")
    how.add_argument("--calibration-images", type=int, default=200,
                     help="int8: at most this many training images for calibration (default 200)")
    how.add_argument("--max-auc-drop", type=float, default=0.01,
                     help="int8: refuse if test ROC-AUC drops more than this below fp32 (default 0.01)")
    how.add_argument("--force", action="store_true",
                     help="int8: export even if the ROC-AUC drop exceeds --max-auc-drop")
    how.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17, at most 18)")
    how.add_argument("--mpp", type=float, default=None, metavar="MICRONS",
                     help="microns per pixel of the training images, recorded in the manifest so "
                          "that slide tiles cover the same field of view (default: what the "
                          "dataset declares in histoedge-dataset.json, else unknown)")
    how.add_argument("--sign", metavar="KEY", help="sign the manifest with this Ed25519 private key "
                                                   "(from 'histoedge export keygen'); writes manifest.sig")
    keras = export.add_argument_group("--keras only")
    keras.add_argument("--classes", help="comma-separated class names in output order, "
                                         "e.g. benign,malignant")
    keras.add_argument("--data", metavar="DIR",
                       help="labelled ImageFolder (one sub-folder per class) for test metrics; "
                            "also calibrates int8 unless --calibration-dir is given")
    keras.add_argument("--calibration-dir", metavar="DIR",
                       help="folder of representative images for int8 calibration")
    keras.add_argument("--input-scale", type=_scale, metavar="1/255|1",
                       help="factor from 0..255 pixels to the model's input (default: 1 if the "
                            "model has a Rescaling layer, else 1/255, i.e. the model takes 0..1)")
    export.set_defaults(handler="histoedge.export.package:cli_export")

    modes = export.add_subparsers(dest="export_command", metavar="verify|keygen|sign")
    verify = modes.add_parser(
        "verify", help="check an exported version (checksum, load, test batch)",
        description="Check MODELS/NAME/VERSION: SHA-256 against the manifest, onnxruntime load, "
                    "tensor names/shapes/dtypes, a random uint8 test batch whose probabilities "
                    "must sum to 1. Exits non-zero on any mismatch.")
    verify.add_argument("path", metavar="DIR", help="version directory, e.g. models/breast/3")
    verify.add_argument("--batch-size", type=int, default=4, help="test batch size (default 4)")
    verify.add_argument("--trusted-keys", metavar="DIR",
                        help="also require manifest.sig made by a public key (*.pub) in DIR")
    verify.set_defaults(handler="histoedge.export.verify:cli_verify")

    keygen = modes.add_parser(
        "keygen", help="make an Ed25519 key pair for signing model packages",
        description="Write DIR/NAME.key (private, mode 0600: keep it where you export, not on the "
                    "edge box) and DIR/NAME.pub (copy it into the server's --trusted-keys folder).")
    keygen.add_argument("--out", metavar="DIR", default=".", help="folder for the key files (default .)")
    keygen.add_argument("--name", default="histoedge", help="file name stem (default histoedge)")
    keygen.set_defaults(handler="histoedge.export.signing_cli:cli_keygen")

    sign = modes.add_parser(
        "sign", help="sign an already exported version (writes manifest.sig)",
        description="Sign MODELS/NAME/VERSION/manifest.json with an Ed25519 private key.")
    sign.add_argument("path", metavar="DIR", help="version directory, e.g. models/breast/3")
    sign.add_argument("--key", required=True, help="private key file (from 'histoedge export keygen')")
    sign.set_defaults(handler="histoedge.export.signing_cli:cli_sign")
