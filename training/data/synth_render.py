"""Rendering of synthetic H&E tiles (used by :mod:`training.data.synth`).

Tissue is built as two stain-density maps, haematoxylin (nuclei) and eosin
(stroma, cytoplasm), mixed with stain vectors by the Beer-Lambert law. Textures
are filtered noise and nuclei are OpenCV polygons, so a 96 px tile takes about a
millisecond or two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAGNIFICATIONS = (40, 100, 200, 400)
# nuclei look bigger and fewer at higher magnification
_MAG_SCALE = {40: 0.7, 100: 0.85, 200: 1.0, 400: 1.2}
SUBTYPES = {"A": "glands", "F": "spindle", "PT": "spindle", "TA": "glands",
            "DC": "sheet", "LC": "rows", "MC": "clusters", "PC": "papillary"}
# subtype-specific shift of the latent grade (lobular carcinoma is notably bland)
_GRADE_SHIFT = {"A": 0.0, "F": -0.04, "PT": 0.03, "TA": 0.0,
                "DC": 0.05, "LC": -0.04, "MC": 0.0, "PC": 0.0}
_MODES = ("sheet", "glands", "rows", "spindle", "clusters", "papillary")
# how often a tile shows its subtype's typical architecture; the rest borrow another one,
# so nuclear features, not architecture alone, separate the classes
_TYPICAL = 0.35
_H_VEC = np.array([0.65, 0.70, 0.29])
_E_VEC = np.array([0.07, 0.90, 0.43])
_H_MAX = 2.4  # haematoxylin density stored as uint8 0..255 on the drawing canvas
# Physical width of a rendered tile at the reference 200X magnification (nuclear scale 1.0),
# whatever its pixel size: nuclei of 8-14 um diameter, as in real breast tissue.  A tile of
# S pixels therefore has FIELD_MICRONS / S microns per pixel.
FIELD_MICRONS = 128.0
# Another laboratory at stain shift 1: a bluer, darker haematoxylin and a paler, pinker
# eosin (stain batch, staining time and scanner colour profile together); OD vectors and
# per-stain intensity factors.  The shift moves the tile's colours, never its content.
_SHIFT_H_VEC = np.array([0.45, 0.80, 0.40])
_SHIFT_E_VEC = np.array([0.02, 0.75, 0.66])
_SHIFT_H_GAIN, _SHIFT_E_GAIN = 1.35, 0.65


@dataclass(frozen=True)
class TileSpec:
    """What one tile shows: latent grade in [0, 1], subtype, magnification, patient stain."""

    grade: float
    subtype: str
    magnification: int
    stain: np.ndarray  # 6 standard normals: haematoxylin and eosin vector/intensity jitter
    seed: int
    stain_shift: float = 0.0  # 0 = this lab; 1 = another lab's stain (see _SHIFT_*)


def _textures(cv2, rng, size: int, angle: float):
    """Fibre texture (noise smeared along ``angle``) and a smooth field, both standardised."""
    sigma_along, sigma_across = max(3.0, 0.05 * size), 0.7
    half = int(3 * sigma_along)
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
    along = xx * np.cos(angle) + yy * np.sin(angle)
    across = -xx * np.sin(angle) + yy * np.cos(angle)
    kernel = np.exp(-0.5 * ((along / sigma_along) ** 2 + (across / sigma_across) ** 2))
    noise = rng.standard_normal((size, size), dtype=np.float32)
    fibres = cv2.filter2D(noise, -1, kernel / kernel.sum(), borderType=cv2.BORDER_WRAP)
    coarse = rng.standard_normal((size // 12 + 3, size // 12 + 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    return [(a - a.mean()) / (a.std() + 1e-6) for a in (fibres, smooth)]


def _centres(rng, mode: str, size: int, r: float, coverage: float, angle: float):
    """Nucleus centres for an arrangement; also gland lumens as (x, y, radius)."""
    lumens = []
    area = size * size
    if mode in ("glands", "papillary"):
        ring = rng.uniform(3.2, 4.5) * r if mode == "glands" else rng.uniform(5.5, 7.5) * r
        per_gland = max(5, int(2 * np.pi * ring / (2.2 * r)))
        n_glands = max(1, int(round(coverage * area / (np.pi * r * r) / per_gland)))
        # crowded, high-grade epithelium spills out of the glands (solid/cribriform areas)
        n_solid = int(max(coverage - 0.15, 0.0) * area / (np.pi * r * r))
        points = [rng.uniform(-r, size + r, (n_solid, 2))]
        for cx, cy in rng.uniform(-0.1 * size, 1.1 * size, (n_glands, 2)):
            count = per_gland
            theta = np.linspace(0, 2 * np.pi, count, endpoint=False) + rng.uniform(0, 6.3)
            radial = ring + rng.normal(0, 0.25 * r + coverage * 4 * r, count)
            points.append(np.stack([cx + radial * np.cos(theta), cy + radial * np.sin(theta)], 1))
            lumens.append((cx, cy, ring - 1.3 * r))
        return np.concatenate(points), lumens
    if mode == "rows":
        spacing = 2.4 * r
        n_rows = max(1, int(coverage * size / (1.2 * r)))
        points = []
        for _ in range(n_rows):
            a = angle + rng.normal(0, 0.15)
            offset = rng.uniform(-0.6, 0.6) * size
            t = np.arange(-0.8 * size, 0.8 * size, spacing) + rng.uniform(0, spacing)
            px = size / 2 + t * np.cos(a) - offset * np.sin(a) + rng.normal(0, 0.3 * r, t.size)
            py = size / 2 + t * np.sin(a) + offset * np.cos(a) + rng.normal(0, 0.3 * r, t.size)
            points.append(np.stack([px, py], 1))
        return np.concatenate(points), lumens
    count = max(3, int(coverage * area / (np.pi * r * r)))
    if mode == "clusters":
        n_clusters = max(1, count // 12)
        hubs = rng.uniform(0.15 * size, 0.85 * size, (n_clusters, 2))
        return hubs[rng.integers(n_clusters, size=count)] + rng.normal(0, 2.8 * r, (count, 2)), lumens
    if mode == "spindle":
        count = max(3, count // 2)
    return rng.uniform(-r, size + r, (count, 2)), lumens


def _polygons(rng, centres, radii, aspect, angles, irregularity, vertices=12):
    """Irregular elliptical nucleus outlines: low-order Fourier wobble on an ellipse."""
    n = len(centres)
    theta = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    wobble = np.zeros((n, vertices))
    for harmonic in (2, 3, 4):
        amp = rng.normal(0, 1, (n, 1)) * irregularity / harmonic ** 0.5
        wobble += amp * np.cos(harmonic * theta + rng.uniform(0, 6.3, (n, 1)))
    rho = radii[:, None] * np.clip(1 + wobble, 0.5, 1.6)
    x = rho * np.cos(theta) * aspect[:, None]
    y = rho * np.sin(theta) / np.sqrt(aspect[:, None])
    ca, sa = np.cos(angles)[:, None], np.sin(angles)[:, None]
    px = centres[:, :1] + x * ca - y * sa
    py = centres[:, 1:] + x * sa + y * ca
    return np.round(np.stack([px, py], -1) * 8).astype(np.int32)  # 3 fractional bits


def _render_one(cv2, spec: TileSpec, size: int) -> np.ndarray:
    rng = np.random.default_rng(spec.seed)
    fibre_angle = rng.uniform(0, np.pi)
    fibres, smooth = _textures(cv2, rng, size, fibre_angle)
    g = float(np.clip(spec.grade + _GRADE_SHIFT[spec.subtype], 0.0, 1.0))
    mode = SUBTYPES[spec.subtype] if rng.random() < _TYPICAL else _MODES[rng.integers(len(_MODES))]
    scale = _MAG_SCALE[spec.magnification] * size
    r_mean = scale * (0.021 + 0.046 * g)
    coverage = 0.06 + 0.28 * g + rng.normal(0, 0.03)
    centres, lumens = _centres(rng, mode, size, r_mean, max(coverage, 0.04), fibre_angle)
    n = len(centres)
    radii = r_mean * np.exp(rng.normal(0, 0.07 + 0.28 * g, n))
    if mode == "spindle":
        aspect = rng.uniform(2.2, 3.4, n)
        angles = fibre_angle + rng.normal(0, 0.2, n)
    else:
        aspect = 1 + np.abs(rng.normal(0, 0.12 + 0.25 * g, n))
        angles = rng.uniform(0, np.pi, n)
    nuclei = _polygons(rng, centres, radii, aspect, angles, 0.04 + 0.22 * g)
    cells = _polygons(rng, centres, radii * (2.2 - 1.0 * g), np.ones(n), angles, 0.1)
    density = (0.7 + 1.2 * g) * np.exp(rng.normal(0, 0.06 + 0.14 * g, n))

    cyto = np.zeros((size, size), np.uint8)
    nuc = np.zeros((size, size), np.uint8)
    lumen = np.zeros((size, size), np.uint8)
    if mode != "spindle":
        cv2.fillPoly(cyto, list(cells), 255, cv2.LINE_AA, 3)
    for cx, cy, rad in lumens:
        if rad > 1 and mode == "glands":
            cv2.circle(lumen, (int(cx * 8), int(cy * 8)), int(rad * 8), 255, -1, cv2.LINE_AA, 3)
    for poly, d in zip(nuclei, density):
        cv2.fillPoly(nuc, [poly], int(min(d, _H_MAX) / _H_MAX * 255), cv2.LINE_AA, 3)
    # stromal fibroblasts: small dark elongated nuclei along the fibres, in every tissue type
    n_fib = rng.poisson(size * size / 900.0)
    if n_fib:
        fib_c = rng.uniform(0, size, (n_fib, 2))
        fib_r = np.full(n_fib, 0.02 * scale)
        fib_poly = _polygons(rng, fib_c, fib_r, rng.uniform(2.5, 4, n_fib),
                             fibre_angle + rng.normal(0, 0.2, n_fib), 0.05)
        cv2.fillPoly(nuc, list(fib_poly), int(1.1 / _H_MAX * 255), cv2.LINE_AA, 3)
    nucleoli = rng.random(n) < 0.7 * g * g
    for (cx, cy), rad in zip(centres[nucleoli], radii[nucleoli]):
        cv2.circle(nuc, (int(cx * 8), int(cy * 8)), max(int(0.25 * rad * 8), 4), 255, -1,
                   cv2.LINE_AA, 3)

    h_nuc = nuc.astype(np.float32) / 255 * _H_MAX
    nuc_mask = np.minimum(h_nuc / 0.6, 1.0)
    chromatin = cv2.GaussianBlur(rng.standard_normal((size, size), dtype=np.float32), (0, 0),
                                 0.5 + 0.6 * g)
    chromatin /= chromatin.std() + 1e-6
    h_nuc *= np.clip(1 + (0.08 + 0.3 * g) * chromatin, 0.3, 2.0)
    c = cyto.astype(np.float32) / 255
    lum = lumen.astype(np.float32) / 255
    e_level = rng.uniform(0.45, 0.8)
    stroma = e_level * np.clip(0.8 + 0.25 * fibres, 0.1, 2.0) * (0.88 + 0.12 * smooth)
    eosin = stroma * (1 - c) + c * rng.uniform(0.25, 0.4) * (1 + 0.1 * smooth)
    eosin *= 1 - 0.6 * nuc_mask
    haem = h_nuc + 0.07 * c + 0.03
    # open spaces (fat, lumens, clefts); mucinous carcinoma fills them with pale mucin
    open_threshold = {"clusters": 0.2, "papillary": 0.9}.get(mode, 1.3)
    space = np.clip((smooth - open_threshold) / 0.4, 0, 1) * (1 - nuc_mask)
    space = np.maximum(space, lum * (1 - nuc_mask))
    if mode == "clusters":
        space *= 1 - np.minimum(c * 2, 1)
    keep = 1 - space
    haem = haem * keep + space * (0.09 if mode == "clusters" else 0.01)
    eosin = eosin * keep + space * (0.06 if mode == "clusters" else 0.02)

    s = spec.stain
    h_vec = np.abs(_H_VEC + 0.06 * s[0:3])
    e_vec = np.abs(_E_VEC + 0.06 * s[3:6])
    h_vec /= np.linalg.norm(h_vec)
    e_vec /= np.linalg.norm(e_vec)
    h_vec, e_vec = _shift_stains(h_vec, e_vec, spec.stain_shift)
    h_vec *= 1 + 0.12 * s[0]
    e_vec *= 1 + 0.15 * s[4]
    od = haem[..., None] * h_vec.astype(np.float32) + eosin[..., None] * e_vec.astype(np.float32)
    rgb = np.exp(-od) * np.float32(255 * rng.uniform(0.93, 1.04))
    if rng.random() < 0.35:  # out-of-focus tiles
        rgb = cv2.GaussianBlur(rgb, (0, 0), rng.uniform(0.4, 1.3) * size / 96)
    rgb += rng.standard_normal(rgb.shape, dtype=np.float32) * np.float32(rng.uniform(1.0, 4.0))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _shift_stains(h_vec, e_vec, shift: float):
    """Move unit H and E vectors ``shift`` of the way to the other lab's and scale their strength.

    Deterministic (no random draws), so a shifted dataset shows the same tissue as the unshifted one.
    """
    if not shift:
        return h_vec, e_vec
    moved = []
    for vec, target, gain in ((h_vec, _SHIFT_H_VEC, _SHIFT_H_GAIN), (e_vec, _SHIFT_E_VEC, _SHIFT_E_GAIN)):
        target = target / np.linalg.norm(target)
        mixed = (1 - shift) * vec + shift * target
        moved.append(np.abs(mixed) / np.linalg.norm(mixed) * (1 + shift * (gain - 1)))
    return moved[0], moved[1]


def render_tile(spec: TileSpec, size: int) -> np.ndarray:
    """Render one tile as uint8 RGB [size, size, 3]."""
    import cv2

    return _render_one(cv2, spec, size)


def render_tiles(specs: list[TileSpec], size: int) -> np.ndarray:
    """Render ``specs`` into uint8 RGB tiles [N, size, size, 3]."""
    return np.stack([render_tile(spec, size) for spec in specs])
