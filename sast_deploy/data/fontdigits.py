"""A second, independent source of N-MNIST-like recordings: typeset digits, not handwriting.

The embedded default (:mod:`sast_deploy.data.synthetic`) records scikit-learn's ``load_digits``
images. This generator records digits typeset in the fonts that ship with matplotlib (DejaVu
Sans, Sans Mono and Serif in four weights/slants each, STIX in four, Computer Modern roman,
bold, sans and typewriter): 20 fonts, so 20 glyphs per digit. Each recording rasterises its
glyph at 28x28 pixels under its own random affine jitter (rotation, scale, shear, stroke
thickness, placement) and records it with the same camera (:class:`SaccadeCamera`,
:func:`saccade_recording`: saccades, optics, DVS/ATIS pixel model), so only the digit images
differ from the default. Nothing is downloaded.

It exists as a transfer check that no tuner and no recipe choice ever sees: train on the
embedded data, score on these (``benchmarks/transfer_check.py``). Source ids name the glyph
(font x digit); the split is by font, so no glyph has recordings on both sides.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from ..validation import Count, Fraction, Seed, Size0, check_ranges, file_data, ranged
from .synthetic import (EventSplit, SaccadeCamera, config_cache_key, generate_parallel, optics, pack_split,
                        saccade_recording)

FONTDIGITS_GENERATOR_VERSION = 1  # bump when the generator's output changes for the same parameters

#: matplotlib's bundled font files with lining digits (cmmi10 has old-style digits; the Display
#: and STIX size/NonUni files have no digits of their own)
FONT_FILES: Tuple[str, ...] = tuple(
    [f"DejaVu{family}{style}.ttf" for family in ("Sans", "SansMono") for style in ("", "-Bold", "-Oblique", "-BoldOblique")]
    + [f"DejaVuSerif{style}.ttf" for style in ("", "-Bold", "-Italic", "-BoldItalic")]
    + [f"STIXGeneral{style}.ttf" for style in ("", "Bol", "Italic", "BolIta")]
    + [f"{name}.ttf" for name in ("cmr10", "cmb10", "cmss10", "cmtt10")]
)

SUPERSAMPLE = 4  # coverage of each pixel from a 4x4 grid of points inside it


@file_data
@dataclass(frozen=True)
class FontDigitsConfig(SaccadeCamera):
    """Parameters of the font-digit generator: the camera (:class:`SaccadeCamera`, the
    default's calibration) and the typeset images. Lengths in pixels of the 28x28 image,
    angles in degrees. The cache key is derived from all fields."""

    seed: Seed = 0
    train_variants: Count = 10  # recordings per training glyph (font x digit), each its own jitter
    test_variants: Count = 10  # recordings per test glyph
    test_fraction: ranged(float, gt=0, lt=1) = 0.5  # fraction of the fonts held out (split by font)
    max_fonts: Size0 = 0  # 0 = all 20; tests use a few
    image_px: ranged(int, ge=8, le=256) = 28  # the rasterised image, as MNIST's
    glyph_height_px: ranged(float, gt=0, le=256) = 22.0  # the digit's height before jitter
    rotation_deg: ranged(float, ge=0, le=180) = 8.0  # std of the rotation
    scale_std: Fraction = 0.08  # std of the relative size
    shear_std: ranged(float, ge=0, le=10) = 0.12  # std of the horizontal shear (x += shear * y)
    stroke_px: Tuple[ranged(float, ge=-4, le=4), ...] = (-0.5, -0.25, 0.0, 0.25, 0.5, 0.75)  # stroke thickened (+) or thinned (-), one drawn per recording
    shift_px: ranged(float, ge=0, le=256) = 1.0  # std of the placement in the image

    def __post_init__(self):
        check_ranges(self, "data.synthetic")
        if self.max_fonts == 1 or self.max_fonts < 0:
            raise ValueError(f"max_fonts must be 0 (all) or >= 2 (one font per split at least), got {self.max_fonts}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if min(self.train_variants, self.test_variants) < 1:
            raise ValueError("train_variants and test_variants must be >= 1")
        if self.image_px < 8 or not 0 < self.glyph_height_px <= self.image_px:
            raise ValueError(f"need image_px >= 8 and 0 < glyph_height_px <= image_px, got {self.image_px}, {self.glyph_height_px}")
        if not self.stroke_px:
            raise ValueError("stroke_px must list at least one stroke change")

    def cache_key(self) -> str:
        return config_cache_key(self, FONTDIGITS_GENERATOR_VERSION)


def font_path(name: str) -> Path:
    """A font file that ships with matplotlib."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name


@functools.lru_cache(maxsize=None)
def glyph_outline(font: str, digit: int):
    """The outline of ``digit`` in ``font`` (a matplotlib Path), its height normalised to 1 and
    its bounding box centred on (0, 0), y up."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath
    from matplotlib.transforms import Affine2D

    path = TextPath((0, 0), str(digit), size=1.0, prop=FontProperties(fname=str(font_path(font))))
    (x0, y0), (x1, y1) = path.get_extents().get_points()
    return path.transformed(Affine2D().translate(-(x0 + x1) / 2, -(y0 + y1) / 2).scale(1.0 / (y1 - y0)))


@dataclass(frozen=True)
class Jitter:
    """One recording's draw of the affine jitter and stroke change (pixels, degrees)."""

    rotation_deg: float = 0.0
    scale: float = 1.0
    shear: float = 0.0
    stroke_px: float = 0.0
    shift_px: Tuple[float, float] = (0.0, 0.0)

    @classmethod
    def draw(cls, rng: np.random.Generator, cfg: FontDigitsConfig) -> "Jitter":
        return cls(rotation_deg=cfg.rotation_deg * rng.standard_normal(), scale=1.0 + cfg.scale_std * rng.standard_normal(),
                   shear=cfg.shear_std * rng.standard_normal(), stroke_px=float(rng.choice(cfg.stroke_px)),
                   shift_px=tuple(cfg.shift_px * rng.standard_normal(2)))


def glyph_image(font: str, digit: int, jitter: Jitter, cfg: FontDigitsConfig) -> np.ndarray:
    """The digit rasterised to an [image_px, image_px] ink image in [0, 1] (white on black):
    the outline sheared, rotated, scaled and placed per ``jitter``, each pixel's coverage from a
    supersampled grid, the stroke grown or shrunk by ``jitter.stroke_px``."""
    from matplotlib.transforms import Affine2D

    n = cfg.image_px * SUPERSAMPLE
    centre = np.array([cfg.image_px / 2 + jitter.shift_px[0], cfg.image_px / 2 + jitter.shift_px[1]]) * SUPERSAMPLE
    # y down in the image: flip the outline, then shear, rotate and scale it about its centre
    to_image = (Affine2D().scale(1.0, -1.0).skew(np.arctan(jitter.shear), 0.0).rotate_deg(jitter.rotation_deg)
                .scale(cfg.glyph_height_px * jitter.scale * SUPERSAMPLE).translate(*centre))
    outline = glyph_outline(font, digit).transformed(to_image)
    centres = np.stack(np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5), axis=-1).reshape(-1, 2)  # (x, y)
    fine = _filled(outline, centres).reshape(n, n)
    fine = _stroke(fine, jitter.stroke_px * SUPERSAMPLE)
    coverage = fine.reshape(cfg.image_px, SUPERSAMPLE, cfg.image_px, SUPERSAMPLE).mean(axis=(1, 3))
    return optics(coverage, cfg.optics_blur_px)


def _filled(outline, points: np.ndarray) -> np.ndarray:
    """Which ``points`` [N, 2] lie inside the glyph ``outline``: its contours combined by the
    even-odd rule, so that the counters of 0, 4, 6, 8 and 9 stay open (``Path.contains_points``
    of the compound path fills them)."""
    from matplotlib.path import Path as MplPath

    inside = np.zeros(len(points), dtype=bool)
    for polygon in outline.to_polygons(closed_only=True):
        inside ^= MplPath(polygon).contains_points(points)
    return inside


def _stroke(mask: np.ndarray, grow_px: float) -> np.ndarray:
    """``mask`` grown (``grow_px`` > 0) or shrunk by ``grow_px`` (fine) pixels: a binary
    dilation or erosion with a disk of that radius."""
    from scipy import ndimage

    r = int(round(abs(grow_px)))
    if r == 0:
        return mask
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = xx**2 + yy**2 <= r * r
    return ndimage.binary_dilation(mask, disk) if grow_px > 0 else ndimage.binary_erosion(mask, disk)


def split_fonts(n_fonts: int, test_fraction: float, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Train and test font indices: a seeded permutation, at least one font on each side."""
    order = rng.permutation(n_fonts)
    n_test = min(max(1, int(round(test_fraction * n_fonts))), n_fonts - 1)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def source_id(font: int, digit: int) -> int:
    """The glyph's id: font index x 10 + digit."""
    return font * 10 + digit


def _recording_task(task) -> np.ndarray:
    font, digit, seed, cfg = task
    rng = np.random.default_rng(seed)
    ink = glyph_image(FONT_FILES[font], digit, Jitter.draw(rng, cfg), cfg)
    return saccade_recording(ink, rng, cfg, shift=False)  # placement is part of the jitter


def generate_fontdigits(cfg: FontDigitsConfig, progress: bool = True) -> Tuple[EventSplit, EventSplit]:
    """Generate the train and test splits, split by font: no glyph has recordings on both sides.
    Every (font, digit, variant, split) slot has its own seed, so a subset of the fonts
    (``max_fonts``) gives the same recordings for the fonts it keeps."""
    n_fonts = len(FONT_FILES) if cfg.max_fonts <= 0 else min(cfg.max_fonts, len(FONT_FILES))
    train_fonts, test_fonts = split_fonts(n_fonts, cfg.test_fraction, np.random.default_rng(cfg.seed))
    n_var = max(cfg.train_variants, cfg.test_variants, 1)
    seeds = np.random.SeedSequence(cfg.seed).spawn(len(FONT_FILES) * 10 * n_var)
    jobs: Dict[str, List[Tuple[int, int, int]]] = {
        "train": [(f, d, v) for f in train_fonts for d in range(10) for v in range(cfg.train_variants)],
        "test": [(f, d, v) for f in test_fonts for d in range(10) for v in range(cfg.test_variants)],
    }
    out = {}
    for split, slots in jobs.items():
        tasks = [(int(f), d, seeds[(source_id(f, d)) * n_var + v], cfg) for f, d, v in slots]
        recs = generate_parallel(_recording_task, tasks, f"generating fontdigits-nmnist {split}", progress)
        out[split] = pack_split([(ev, d, source_id(int(f), d)) for (f, d, _), ev in zip(slots, recs)])
    return out["train"], out["test"]
