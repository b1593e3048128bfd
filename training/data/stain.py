"""Stain normalisation of a training run's images (the arithmetic is ``export/stain.py``'s).

The reference is fitted on the training split only (or on ``preprocess.reference_image``),
stored in ``RUN/stain.json`` (the export copies it into the manifest) and applied to the
train, validation and test images alike before anything else sees them.  A resumed run reuses
the stored reference, so its members see the same pixels as before.

Example::

    reference = normalise_dataset(config, dataset, splits["train"], run_dir)
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from histoedge.export.stain import STAIN_FILE, StainError, StainReference, fit_reference, load_run_reference
from histoedge.training.errors import DataError

log = logging.getLogger(__name__)


def fit_for_run(config, images: np.ndarray) -> StainReference:
    """Fit the configured reference on ``images`` (the training split) or on the reference image.

    Raises:
        DataError: the reference image is unreadable or the images hold too little tissue.
    """
    from histoedge.training.data.images import decode_image

    method, reference_image = config.preprocess.stain_normalisation, config.preprocess.reference_image
    try:
        if reference_image is not None:
            try:
                data = Path(reference_image).read_bytes()
                images = decode_image(data, config.data.image_size)
            except (OSError, ValueError) as error:
                raise DataError(f"preprocess.reference_image {reference_image}: {error}") from None
        return fit_reference(method, images)
    except StainError as error:
        raise DataError(str(error)) from None


def normalise_dataset(config, dataset, train_index: np.ndarray, run_dir: Path) -> StainReference | None:
    """Normalise ``dataset.images`` in place of the array (all splits); return the reference.

    Writes ``RUN/stain.json``; returns None (and removes a stale ``stain.json``) when
    ``preprocess.stain_normalisation`` is "none".  Tiles the method cannot handle are left as
    they are and counted in the log.
    """
    path = Path(run_dir) / STAIN_FILE
    method = config.preprocess.stain_normalisation
    if method == "none":
        path.unlink(missing_ok=True)
        return None
    reference = load_run_reference(run_dir) if path.is_file() else None
    if reference is None or reference.method != method:
        reference = fit_for_run(config, dataset.images[train_index])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(reference.to_dict(), indent=2) + "\n")
        tmp.replace(path)
    out = np.empty_like(dataset.images)
    reasons = Counter()
    for i, image in enumerate(dataset.images):
        out[i], reason = reference.normalise(image)
        reasons[reason] += 1
    dataset.images = out
    left = {k: v for k, v in reasons.items() if k is not None}
    log.info("stain normalisation (%s): %d of %d images normalised, %d left as they were%s", method,
             reasons[None], len(out), sum(left.values()),
             f" ({', '.join(f'{k}: {v}' for k, v in sorted(left.items()))})" if left else "")
    return reference
