"""Small H&E tiles for stain-normalisation tests: synthetic tissue, another lab's stain, extremes."""

from __future__ import annotations

import numpy as np

from histoedge.training.data.synth_render import TileSpec, render_tiles


def he_tiles(count: int = 6, size: int = 48, seed: int = 0, stain_shift: float = 0.0) -> np.ndarray:
    """uint8 RGB [count, size, size, 3] synthetic H&E tiles (same tissue for the same seed)."""
    rng = np.random.default_rng(seed)
    specs = [TileSpec(grade=float(rng.uniform(0.2, 0.8)), subtype=str(rng.choice(["DC", "A", "LC"])),
                      magnification=200, stain=rng.normal(0, 1, 6), seed=int(rng.integers(1 << 31)),
                      stain_shift=stain_shift) for _ in range(count)]
    return render_tiles(specs, size)


def extreme_tiles(he: np.ndarray) -> dict[str, np.ndarray]:
    """Tiles stain normalisation must leave alone: background, black, gray, eosin only, tiny, flat."""
    size = he.shape[0]
    od_eosin = np.linspace(0.05, 0.8, size * size).reshape(size, size, 1) * np.array([0.07, 0.99, 0.11])
    mostly_background = np.full_like(he, 242)
    mostly_background[: size // 8, : size // 8] = he[: size // 8, : size // 8]
    return {
        "white": np.full((size, size, 3), 255, np.uint8),
        "near white": np.full((size, size, 3), 236, np.uint8) + np.eye(size, dtype=np.uint8)[..., None] * 3,
        "black": np.zeros((size, size, 3), np.uint8),
        "near black": np.full((size, size, 3), 4, np.uint8),
        "gray": np.repeat(he.mean(axis=-1, keepdims=True).astype(np.uint8), 3, axis=-1),
        "mostly background": mostly_background,
        "eosin only": np.clip(256 * np.exp(-od_eosin) - 1, 0, 255).astype(np.uint8),
        "one pixel": he[:1, :1].copy(),
        "flat pink": np.broadcast_to(np.array([200, 120, 170], np.uint8), he.shape).copy(),
    }
