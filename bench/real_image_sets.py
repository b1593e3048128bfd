"""Assemble two small real (not synthetic) image sets as ImageFolder trees, from files shipped inside
installed packages, so the augmentation benchmark needs no download.

* ``digits``: scikit-learn's bundled handwritten digits (1797 grayscale 8x8 images, 10 classes),
  upscaled to 32x32 PNG files (R = G = B).
* ``photos``: 64x64 patches cut from scikit-learn's two bundled colour photographs
  (``china.jpg``, ``flower.jpg``); four classes: the top or bottom half of either photo,
  150 patches each at random positions (seeded).

Usage::

    .venv/bin/python bench/real_image_sets.py --out bench/data
    .venv/bin/histoedge train --data bench/data/digits --out runs/digits --image-size 32
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np


def write_digits(out: Path, size: int = 32) -> int:
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        pixels = np.clip(image * (255.0 / 16.0), 0, 255).astype(np.uint8)
        pixels = cv2.resize(pixels, (size, size), interpolation=cv2.INTER_CUBIC)
        folder = out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"digit_{i:04d}.png"), pixels)
    return len(digits.target)


def write_photo_patches(out: Path, per_class: int = 150, patch: int = 64, seed: int = 0) -> int:
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = load_sample_images()
    count = 0
    for name, image in zip(("china", "flower"), photos.images):
        height, width = image.shape[:2]
        for half, (top, bottom) in (("top", (0, height // 2)), ("bottom", (height // 2, height))):
            folder = out / f"{name}_{half}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                y = int(rng.integers(top, bottom - patch))
                x = int(rng.integers(0, width - patch))
                crop = image[y:y + patch, x:x + patch]
                cv2.imwrite(str(folder / f"{name}_{half}_{i:03d}.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
                count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/data", help="folder to write (default bench/data)")
    args = parser.parse_args()
    out = Path(args.out)
    print(f"digits: {write_digits(out / 'digits')} images in {out / 'digits'}")
    print(f"photos: {write_photo_patches(out / 'photos')} images in {out / 'photos'}")


if __name__ == "__main__":
    main()
