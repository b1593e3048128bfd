"""Training-stage subcommands: ``data synth``, ``data synth-slide``, ``train`` and ``report``.

At import time only argparse and the configuration's flag table (no TensorFlow).
"""

from __future__ import annotations

import argparse

from histoedge.training.config import CLI_FLAGS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data``, ``train`` and ``report``; handlers are named as ``"module:function"``."""
    data = subparsers.add_parser("data", help="create or inspect datasets")
    data_sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    synth = data_sub.add_parser(
        "synth", help="write the built-in synthetic H&E dataset in the BreakHis layout")
    synth.add_argument("--out", required=True, help="folder to write (created)")
    synth.add_argument("--n", type=int, default=2000, help="number of images (default 2000)")
    synth.add_argument("--size", type=int, default=96, help="image side in pixels (default 96)")
    synth.add_argument("--patients", type=int, default=None,
                       help="number of patients (default 82, as BreakHis; fewer when --n is "
                            "under 410, so that each patient has at least 5 images)")
    synth.add_argument("--malignant-fraction", type=float, default=0.69,
                       help="fraction of malignant patients' images (default 0.69, as BreakHis)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--stain-shift", type=float, default=0.0,
                       help="0..1: stain the tiles like another laboratory (same seed = same tissue; "
                            "default 0)")
    synth.set_defaults(handler="histoedge.training.data.synth:cli_main")

    slide = data_sub.add_parser(
        "synth-slide", help="write a synthetic whole-slide image (pyramidal tiled TIFF) with its "
                            "ground-truth mask",
        description="Write a pyramidal tiled TIFF that OpenSlide opens: benign and malignant tissue "
                    "from the synthetic renderer on glass, a pen mark and a black scanner border. "
                    "SLIDE.mask.png (labels 0 glass, 1 benign, 2 malignant, 3 pen, 4 border, one "
                    "pixel per 16) and SLIDE.mask.json go beside it.")
    slide.add_argument("--out", required=True, help="slide file to write, e.g. slide.tiff")
    slide.add_argument("--width", type=int, default=8192, help="level-0 width in pixels (default 8192)")
    slide.add_argument("--height", type=int, default=6144, help="level-0 height in pixels (default 6144)")
    slide.add_argument("--mpp", type=float, default=0.5,
                       help="level-0 microns per pixel written into the TIFF (default 0.5, a 20x scan)")
    slide.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    slide.set_defaults(handler="histoedge.training.data.synth_slide:cli_synth_slide")

    train = subparsers.add_parser(
        "train", help="train one regularised CNN, or the whole ensemble with --ensemble")
    train.add_argument("--data", required=True, help="dataset folder (ImageFolder or BreakHis layout)")
    train.add_argument("--out", required=True, help="run directory (created; reused to resume)")
    train.add_argument("--config", help="YAML file with configuration overrides")
    train.add_argument("--ensemble", action="store_true",
                       help="train every ensemble member and the meta-learner")
    train.add_argument("--distill", action="store_true",
                       help="then train one student CNN on the ensemble's probabilities of the training "
                            "split (config section 'distill'; exported with 'histoedge export --student')")
    for name, flag in CLI_FLAGS.items():
        default = "none" if flag.default is None else flag.default
        train.add_argument("--" + name.replace("_", "-"), type=flag.type, choices=flag.choices,
                           help=f"{flag.help} (default {default}; config key {'.'.join(flag.key)})")
    train.add_argument("--set", dest="overrides", action="append", default=None,
                       metavar="KEY=VALUE",
                       help="override any config key, e.g. --set optimizer.learning_rate=3e-4 "
                            "(repeatable; VALUE is parsed as YAML)")
    train.add_argument("--quiet", action="store_true", help="log lines instead of progress bars")
    train.add_argument("--distributed", nargs="?", const="multi-worker", default="auto",
                       choices=("auto", "multi-worker", "mirrored", "off"),
                       help="tf.distribute: 'multi-worker' (the flag alone) trains with the workers "
                            "TF_CONFIG names; 'mirrored' over this machine's GPUs; 'off' alone. "
                            "Default 'auto': multi-worker when TF_CONFIG names a cluster")
    train.add_argument("--backup-dir", default=None,
                       help="distributed runs: each worker's BackupAndRestore folders go to "
                            "BACKUP_DIR/<member>/<task>-<index> (default OUT/backup)")
    train.set_defaults(handler="histoedge.training.run:cli_train")

    report = subparsers.add_parser("report", help="regenerate RUN/report.md and RUN/report.html")
    report.add_argument("run", help="run directory")
    report.set_defaults(handler="histoedge.training.report:cli_report")
