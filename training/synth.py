"""The embedded synthetic benchmark: matched clinical, dermoscopy and multispectral views of pigmented lesions.

``python -m training.synth --out DIR --n N --seed S`` writes the product's data layout::

    DIR/clinical/images/L00001.jpg        wide photo: patient's skin, lesion small and off-centre, uneven lighting
    DIR/dermoscopy/images/L00001.png      close view, even lighting, fine structure visible   (~85 % of lesions)
    DIR/multispectral/images/L00001.png   cross-polarised RGB of the close view, no glints      (~35 % of lesions)
    DIR/masks/{clinical,dermoscopy}/L00001.png   binary lesion masks (0/255) in each view's frame, for every lesion
    DIR/labels.csv                        lesion_id,score,patient_id
    DIR/synth_truth.csv                   the latent factors, skin tone (CIELAB, ITA) and which views exist
    DIR/README.txt                        this description, for whoever finds the folder

Ground truth
------------
Each lesion has three latent factors, each rendered so that it can be read off the images:

* ``area_fraction`` in [0.02, 0.36]: lesion area / dermoscopy field area. The outline is an irregular polar blob
  ``r(t) = r0 * (1 + sum_k a_k cos(k t + p_k))``, k = 2..5, whose area is exactly ``pi r0^2 (1 + sum_k a_k^2 / 2)``;
  ``area_fraction`` is that area (the dermoscopy mask agrees up to rasterisation). The clinical photo shows the same
  outline at 0.35-0.55 of the dermoscopy scale (relative to the photo height), blurred edge, off-centre.
* ``darkness`` in [0, 1]: the lesion's L* deficit against the surrounding skin, relative and normalised,
  ``(skin_L - lesion_L) / skin_L = 0.10 + 0.45 * darkness``. Being a ratio to the skin it survives the clinical
  photo's lighting gains, and it means the same on light and dark skin.
* ``heterogeneity`` in [0, 1]: strength of the fine structure (blotches, a pigment network, dots, with cells of
  1/14 to 1/8 of the dermoscopy frame): inside the lesion the structure's L* standard deviation is
  about ``0.12 * heterogeneity * skin_L`` (before clipping and noise). The clinical view shows only the lesion's
  base colour: at that scale the structure is blurred away.

The score, MASI-like (area times intensity), is::

    area_n = clip(area_fraction / 0.36, 0, 1)
    score  = clip((area_n * (darkness + heterogeneity) / 2) ** 0.6, 0, 1)

``synth_truth.csv`` holds the three factors rounded to 6 decimals and the score is computed from those rounded
values, so it can be recomputed from the file. The factors are uniform marginally and correlated through a Gaussian
copula (rho = 0.4: large lesions tend to be darker and more structured, as in clinic); with the 0.6 power this puts
roughly 25 % of lesions in Mild [0, 0.25], 50 % in Moderate (0.25, 0.60] and 25 % in Severe (0.60, 1].

Patients and skin
-----------------
Patients have 1 to ``--patients-max-lesions`` lesions and one skin tone each, built in CIELAB from an ITA drawn
uniformly in [-50, 66] degrees (very light to dark; ITA = atan((L* - 50) / b*) in degrees) with L* in [30, 76],
b* about 10-19 and a* in [9, 15] (a high b* with a low a* looks olive). A lesion's colour is its skin darker (lower
L*) and browner (a*, b* up). Skin-tone bands are model.colorimetry's: very_light > 55 >= light > 41 >= intermediate
> 28 >= tan > 10 >= brown > -30 >= dark.

Every random draw comes from ``numpy.random.default_rng((seed, stream, index))``, so lesion i does not depend on how
many lesions come before it, and the same seed and n give byte-identical files. Images are drawn at a working
resolution of at most 512 px and resized up to the requested size, so phone-size photos
(``--clinical-size 4000x3000 --dermoscopy-size 1024``) cost little more than their encoding.

Shifted benchmarks
------------------
Options that move the generator away from the one the demo model trains on, to test generalisation inside the
project. All are off by default (the files are then byte-identical to a generator without them); the ground truth
and its formula never change, only how the lesion is photographed, on whom, and its outline:

* ``lighting`` (0 = off, 1 = strong): harsher clinical lighting (gain, colour cast, illumination gradient and
  vignette ranges widened by this factor) and a global gain and colour cast on the dermoscopy and multispectral
  captures, which are evenly lit otherwise. Gains multiply skin and lesion alike, so the relative darkness holds.
* ``clinical_scale`` (default 0.35-0.55): how large the lesion is framed in the clinical photo, as a fraction of
  the photo height per dermoscopy-frame unit (zoom).
* ``camera_noise`` (0 = off): extra Gaussian sensor noise in every view, in 8-bit levels (std); ``jpeg_quality``
  (default 92) of the clinical JPEG.
* ``ita_range`` (default -50 to 66 degrees): the skin-tone mix; e.g. (-50, 20) gives mostly tan to dark skin.
* ``shape_irregularity`` (default 1): scales the caps of the outline's harmonics (1.8 gives far more irregular,
  elongated lesions; the area formula stays exact).

``--shifted`` sets the documented shifted benchmark, :data:`SHIFTED`; single options override it.
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import time
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import ArrayLike

from model.cli import run
from model.colorimetry import ita_band, ita_degrees
from model.config import MODALITIES
from model.severity import LABELS, severity_index

# Ground truth (see the module docstring; README.txt repeats it).
AREA_RANGE = (0.02, 0.36)
RELATIVE_DEFICIT = (0.10, 0.45)  # (skin_L - lesion_L) / skin_L = 0.10 + 0.45 * darkness
STRUCTURE_STD = 0.12  # L* std of the structure = 0.12 * heterogeneity * skin_L
SCORE_POWER = 0.6
FACTOR_CORRELATION = 0.4

# Skin tones.
ITA_RANGE = (-50.0, 66.0)
SKIN_L_RANGE = (30.0, 76.0)

HARMONIC_MAX = np.array([0.15, 0.10, 0.07, 0.05])  # caps for harmonics k = 2..5: irregular, never self-crossing
WORKING_MAX_SIDE = 512  # structure is drawn at most this large, then resized up
# Independent random streams of a lesion (0 and 1 are the patients' lesion counts and skin tones). "shift" feeds
# only the shift options' extra draws, so switching them on never moves another stream's draws.
LESION_STREAMS = {"spec": 2, "dermoscopy": 3, "clinical": 4, "multispectral": 5, "shift": 6}
VIEWS = MODALITIES  # one image folder per modality
TRUTH_COLUMNS = (
    "lesion_id", "patient_id", "score", "area_fraction", "darkness", "heterogeneity", "skin_L", "skin_a", "skin_b",
    "ita_deg", "skin_tone_band", "has_dermoscopy", "has_multispectral",
)  # fmt: skip
OUTPUTS = (*VIEWS, "masks", "labels.csv", "synth_truth.csv", "README.txt")


@dataclass(frozen=True)
class SynthOptions:
    """Everything about a benchmark folder except its size ``n`` and ``seed``."""

    clinical_size: tuple[int, int] = (384, 288)  # (width, height)
    dermoscopy_size: int = 256  # square; the multispectral view has the same size
    dermoscopy_fraction: float = 0.85
    multispectral_fraction: float = 0.35
    patients_max_lesions: int = 5
    # Shift options (module docstring, "Shifted benchmarks"); these defaults are the unshifted generator.
    lighting: float = 0.0
    clinical_scale: tuple[float, float] = (0.35, 0.55)
    camera_noise: float = 0.0
    jpeg_quality: int = 92
    ita_range: tuple[float, float] = ITA_RANGE
    shape_irregularity: float = 1.0
    overwrite: bool = False

    def __post_init__(self) -> None:
        if len(self.clinical_size) != 2 or min(self.clinical_size) < 32:
            raise ValueError(f"clinical_size must be (width, height), each >= 32, got {self.clinical_size}")
        if self.dermoscopy_size < 32:
            raise ValueError(f"dermoscopy_size must be >= 32, got {self.dermoscopy_size}")
        for name in ("dermoscopy_fraction", "multispectral_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.patients_max_lesions < 1:
            raise ValueError(f"patients_max_lesions must be >= 1, got {self.patients_max_lesions}")
        if not 0.0 <= self.lighting <= 2.0:
            raise ValueError(f"lighting must be in [0, 2] (0 = off), got {self.lighting}")
        if not 0.1 <= self.clinical_scale[0] <= self.clinical_scale[1] <= 0.9:
            raise ValueError(f"clinical_scale must be (low, high) with 0.1 <= low <= high <= 0.9, got "
                             f"{self.clinical_scale}")
        if not 0.0 <= self.camera_noise <= 50.0:
            raise ValueError(f"camera_noise is a std in 8-bit levels in [0, 50], got {self.camera_noise}")
        if not 5 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [5, 100], got {self.jpeg_quality}")
        if not ITA_RANGE[0] <= self.ita_range[0] <= self.ita_range[1] <= ITA_RANGE[1]:
            raise ValueError(f"ita_range must be (low, high) within {ITA_RANGE} degrees, got {self.ita_range}")
        if not 0.0 <= self.shape_irregularity <= 1.0 / float(HARMONIC_MAX.sum()):
            # r(t) > 0 needs the harmonics' amplitudes to sum below 1
            raise ValueError(f"shape_irregularity must be in [0, {1.0 / float(HARMONIC_MAX.sum()):.2f}], got "
                             f"{self.shape_irregularity}")


SHIFTED: dict[str, object] = {
    "lighting": 1.0, "clinical_scale": (0.25, 0.7), "camera_noise": 4.0, "jpeg_quality": 60,
    "ita_range": (-50.0, 30.0), "shape_irregularity": 1.8,
}
"""The documented shifted benchmark (``--shifted``): every shift at once, each well outside the default."""


# --------------------------------------------------------------------------------------------------- skin tones


@dataclass(frozen=True)
class SkinTone:
    """A patient's skin colour in CIELAB (L* in 0..100)."""

    L: float
    a: float
    b: float

    @property
    def ita_deg(self) -> float:
        """Individual typology angle, atan((L* - 50) / b*) in degrees."""
        return ita_degrees(self.L, self.b)

    @property
    def band(self) -> str:
        return ita_band(self.ita_deg)


def draw_skin_tone(rng: np.random.Generator, ita_range: tuple[float, float] = ITA_RANGE) -> SkinTone:
    """A skin tone with ITA uniform over ``ita_range``; b* gives way when L* would leave SKIN_L_RANGE."""
    slope = math.tan(math.radians(rng.uniform(*ita_range)))
    b = float(rng.uniform(10.0, 19.0))
    L = 50.0 + b * slope
    if not SKIN_L_RANGE[0] <= L <= SKIN_L_RANGE[1]:  # slope != 0 here, since L = 50 is in range
        L = min(max(L, SKIN_L_RANGE[0]), SKIN_L_RANGE[1])
        b = (L - 50.0) / slope  # keep the drawn ITA: move b* instead of L*
    return SkinTone(L=L, a=float(rng.uniform(9.0, 15.0)), b=b)


# --------------------------------------------------------------------------------------------------- the lesion


@dataclass(frozen=True)
class Outline:
    """Irregular star-shaped blob: r(t) = r0 * (1 + sum_k amps[k-2] cos(k t + phases[k-2])), k = 2..5.

    Radii are in units of the dermoscopy frame width.
    """

    r0: float
    amps: tuple[float, ...]
    phases: tuple[float, ...]

    def radius(self, theta: np.ndarray) -> np.ndarray:
        r = np.ones_like(theta)
        for k, (amp, phase) in enumerate(zip(self.amps, self.phases), start=2):
            r += amp * np.cos(k * theta + phase)
        return self.r0 * r

    @property
    def area(self) -> float:
        """Exact area: the integral of r(t)^2 / 2, where the cross terms of the harmonics cancel."""
        return math.pi * self.r0**2 * (1.0 + 0.5 * sum(a * a for a in self.amps))

    @property
    def max_radius(self) -> float:
        return self.r0 * (1.0 + sum(self.amps))


@dataclass(frozen=True)
class Lesion:
    """One lesion's latent description; the views are rendered from it."""

    lesion_id: str
    patient_id: str
    index: int
    skin: SkinTone
    outline: Outline
    centre: tuple[float, float]  # in the dermoscopy frame, fractions of its width/height
    darkness: float
    heterogeneity: float
    has_dermoscopy: bool
    has_multispectral: bool

    @property
    def area_fraction(self) -> float:
        return self.outline.area  # the dermoscopy frame is 1 x 1

    @property
    def score(self) -> float:
        # From the factors as synth_truth.csv stores them, so the file alone reproduces the label.
        factors = (round(self.area_fraction, 6), round(self.darkness, 6), round(self.heterogeneity, 6))
        return float(severity_score(*factors))

    @property
    def lab(self) -> tuple[float, float, float]:
        """The lesion's base colour: its skin, darker by the relative deficit, a little browner."""
        deficit = RELATIVE_DEFICIT[0] + RELATIVE_DEFICIT[1] * self.darkness
        return self.skin.L * (1.0 - deficit), self.skin.a + 6.0 * deficit, self.skin.b + 4.0 * deficit


def severity_score(area_fraction: ArrayLike, darkness: ArrayLike, heterogeneity: ArrayLike) -> np.ndarray:
    """The documented ground truth (module docstring), elementwise over floats or arrays."""
    area_n = np.clip(np.asarray(area_fraction) / AREA_RANGE[1], 0.0, 1.0)
    intensity = (np.asarray(darkness) + np.asarray(heterogeneity)) / 2.0
    return np.clip((area_n * intensity) ** SCORE_POWER, 0.0, 1.0)


def _correlated_uniforms(rng: np.random.Generator, count: int, rho: float) -> list[float]:
    """``count`` U(0, 1) draws with pairwise correlation from one shared normal (a Gaussian copula)."""
    shared = rng.standard_normal()
    z = math.sqrt(rho) * shared + math.sqrt(1.0 - rho) * rng.standard_normal(count)
    return [0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in z]


def draw_lesion(rng: np.random.Generator, index: int, patient_id: str, skin: SkinTone, opts: SynthOptions) -> Lesion:
    """Latent factors, outline and which views exist; the order of draws is part of the seed contract."""
    u_area, darkness, heterogeneity = _correlated_uniforms(rng, 3, FACTOR_CORRELATION)
    area = AREA_RANGE[0] + (AREA_RANGE[1] - AREA_RANGE[0]) * u_area
    amps = tuple(float(a) for a in rng.uniform(0.0, HARMONIC_MAX * opts.shape_irregularity))
    phases = tuple(float(p) for p in rng.uniform(0.0, 2.0 * math.pi, len(amps)))
    outline = _outline_within(area, amps, phases, max_radius=0.48)
    slack = max(0.0, 0.48 - outline.max_radius)  # keep the whole lesion inside the dermoscopy field
    centre = tuple(float(c) for c in 0.5 + rng.uniform(-slack, slack, 2))
    has_dermoscopy, has_multispectral = rng.uniform(size=2) < (opts.dermoscopy_fraction, opts.multispectral_fraction)
    return Lesion(
        lesion_id=f"L{index + 1:05d}",
        patient_id=patient_id,
        index=index,
        skin=skin,
        outline=outline,
        centre=centre,
        darkness=darkness,
        heterogeneity=heterogeneity,
        has_dermoscopy=bool(has_dermoscopy),
        has_multispectral=bool(has_multispectral),
    )


def _outline_within(area: float, amps: tuple[float, ...], phases: tuple[float, ...], max_radius: float) -> Outline:
    """The outline of exactly ``area`` with these harmonics, damped until it fits within ``max_radius``.

    Only a ``shape_irregularity`` above 1 ever needs the damping (the default caps reach at most 0.464).
    """
    while True:
        r0 = math.sqrt(area / (math.pi * (1.0 + 0.5 * sum(a * a for a in amps))))
        outline = Outline(r0=r0, amps=amps, phases=phases)
        if outline.max_radius <= max_radius:
            return outline
        amps = tuple(0.95 * a for a in amps)


def draw_cohort(n: int, seed: int, opts: SynthOptions) -> list[Lesion]:
    """``n`` lesions over patients of 1..patients_max_lesions lesions each, numbered in order."""
    counts_rng = np.random.default_rng((seed, 0))
    lesions: list[Lesion] = []
    patient = 0
    while len(lesions) < n:
        patient += 1
        skin = draw_skin_tone(np.random.default_rng((seed, 1, patient)), opts.ita_range)
        for _ in range(min(int(counts_rng.integers(1, opts.patients_max_lesions + 1)), n - len(lesions))):
            rng = np.random.default_rng((seed, LESION_STREAMS["spec"], len(lesions)))
            lesions.append(draw_lesion(rng, len(lesions), f"P{patient:04d}", skin, opts))
    return lesions


# --------------------------------------------------------------------------------------------------- rasterising


def outline_alpha(
    outline: Outline, size_wh: tuple[int, int], centre: tuple[float, float], scale: float, edge_px: float
) -> np.ndarray:
    """Soft coverage of the outline on a W x H raster -> float32 [H, W] in [0, 1]; >= 0.5 inside the outline.

    Args:
        centre: lesion centre as fractions of the raster's width and height.
        scale: pixels per dermoscopy-frame unit, as a fraction of the raster height.
        edge_px: width of the soft edge in pixels.
    """
    w, h = size_wh
    cx, cy, k = centre[0] * w, centre[1] * h, scale * h
    reach = outline.max_radius * k + edge_px + 1.0
    x0, x1 = max(0, int(cx - reach)), min(w, int(cx + reach) + 1)  # only the bounding box costs trigonometry
    y0, y1 = max(0, int(cy - reach)), min(h, int(cy + reach) + 1)
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    boundary = outline.radius(np.arctan2(dy, dx)) * k
    alpha = np.zeros((h, w), np.float32)
    alpha[y0:y1, x0:x1] = np.clip(0.5 + (boundary - np.hypot(dx, dy)) / edge_px, 0.0, 1.0)
    return alpha


def smooth_noise(rng: np.random.Generator, size_wh: tuple[int, int], cells: int, channels: int = 1) -> np.ndarray:
    """Band-limited noise: a ``cells``-wide grid of normals resized bicubically -> float32 [H, W, C], std ~1."""
    w, h = size_wh
    grid = rng.standard_normal((max(2, round(cells * h / w)), cells, channels)).astype(np.float32)
    field = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w, channels)  # cv2 drops C == 1
    return field / max(float(field.std()), 1e-6)


def working_size(size_wh: tuple[int, int]) -> tuple[int, int]:
    """The size images are drawn at: the requested size, shrunk to WORKING_MAX_SIDE on its longer side."""
    f = min(1.0, WORKING_MAX_SIDE / max(size_wh))
    return max(1, round(size_wh[0] * f)), max(1, round(size_wh[1] * f))


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """float32 CIELAB [H, W, 3] (L* 0..100) -> sRGB float32 [H, W, 3] in [0, 1]."""
    return np.clip(cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_Lab2RGB), 0.0, 1.0)


def finish(rgb: np.ndarray, size_wh: tuple[int, int], rng: np.random.Generator, noise: float) -> np.ndarray:
    """Resize a working-resolution float RGB image to its output size, add sensor noise -> uint8 BGR for cv2."""
    if rgb.shape[1::-1] != tuple(size_wh):
        rgb = cv2.resize(rgb, size_wh, interpolation=cv2.INTER_CUBIC)
    rgb = rgb + noise * rng.standard_normal(rgb.shape, dtype=np.float32)
    return cv2.cvtColor(np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)


def mask_image(alpha: np.ndarray) -> np.ndarray:
    return np.where(alpha >= 0.5, 255, 0).astype(np.uint8)


# --------------------------------------------------------------------------------------------------- the views


def structure_field(rng: np.random.Generator, lesion: Lesion, n: int, inside: np.ndarray) -> np.ndarray:
    """Fine structure of the lesion on an n x n raster -> float32 [n, n], zero mean and unit std inside.

    A random mix of blotches, a warped pigment network and dots, each with features 1/14 to 1/8 of the frame,
    so they survive a resize to 64-96 px. Negative values are darker than the lesion's base colour.
    """
    size = (n, n)
    blotches = smooth_noise(rng, size, int(rng.integers(8, 15)))[..., 0]

    cell = rng.uniform(1 / 14, 1 / 9) * n
    angle = rng.uniform(0.0, math.pi)
    warp = smooth_noise(rng, size, 5, channels=2) * (0.5 * cell)  # a network, not a grid
    xx, yy = np.meshgrid(np.arange(n, dtype=np.float32), np.arange(n, dtype=np.float32))
    u = xx * math.cos(angle) + yy * math.sin(angle) + warp[..., 0]
    v = yy * math.cos(angle) - xx * math.sin(angle) + warp[..., 1]
    ridge = np.maximum(np.cos(2 * math.pi * u / cell), np.cos(2 * math.pi * v / cell))
    network = np.clip((ridge - 0.6) / 0.4, 0.0, 1.0)  # thin lines on a grid of cells

    dots = np.zeros(size, np.float32)
    for _ in range(int(rng.integers(4, 16))):
        theta = rng.uniform(0.0, 2 * math.pi)
        rho = math.sqrt(rng.uniform()) * 0.85 * float(lesion.outline.radius(np.array(theta)))
        x = (lesion.centre[0] + rho * math.cos(theta)) * n
        y = (lesion.centre[1] + rho * math.sin(theta)) * n
        cv2.circle(dots, (round(x), round(y)), max(1, round(rng.uniform(1 / 70, 1 / 40) * n)), 1.0, -1)
    dots = cv2.GaussianBlur(dots, (0, 0), max(0.5, n / 256))

    parts = [blotches, -network, -dots]
    weights = rng.dirichlet((1.0, 1.0, 1.0))
    field = sum(w * (p - p[inside].mean()) / max(float(p[inside].std()), 1e-6) for w, p in zip(weights, parts))
    field = (field - field[inside].mean()) / max(float(field[inside].std()), 1e-6)
    return np.clip(field, -3.0, 2.5).astype(np.float32)


def dermoscopy_lab(lesion: Lesion, n: int, rng: np.random.Generator) -> np.ndarray:
    """The close view in CIELAB at n x n: even skin with faint texture, the lesion with its structure."""
    skin, size = lesion.skin, (n, n)
    alpha = outline_alpha(lesion.outline, size, lesion.centre, 1.0, edge_px=max(1.0, 0.006 * n))
    structure = structure_field(rng, lesion, n, alpha >= 0.5)
    texture = 0.6 * smooth_noise(rng, size, max(8, n // 3))[..., 0] + 0.6 * smooth_noise(rng, size, 6)[..., 0]
    base = np.array(lesion.lab, np.float32)
    lesion_L = np.clip(base[0] + STRUCTURE_STD * lesion.heterogeneity * skin.L * structure, 1.0, 100.0)
    lab = np.empty((n, n, 3), np.float32)
    lab[..., 0] = skin.L + texture + alpha * (lesion_L - skin.L)
    lab[..., 1] = skin.a + alpha * (base[1] - skin.a)
    lab[..., 2] = skin.b + alpha * (base[2] - skin.b)
    return lab


def add_glints(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A few specular highlights, as a non-polarised dermatoscope shows on skin surface oil."""
    n = rgb.shape[0]
    glints = np.zeros(rgb.shape[:2], np.float32)
    for _ in range(int(rng.integers(0, 4))):
        centre = tuple(int(c) for c in rng.integers(0, n, 2))
        cv2.circle(glints, centre, max(1, round(rng.uniform(0.004, 0.012) * n)), 1.0, -1)
    glints = cv2.GaussianBlur(glints, (0, 0), max(0.5, n / 300))[..., None]
    return rgb * (1.0 - glints) + glints


def multispectral_rgb(lesion: Lesion, lab: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cross-polarised capture of the close view: no glints, deeper contrast, its own colour balance."""
    skin = np.array([lesion.skin.L, lesion.skin.a, lesion.skin.b], np.float32)
    rgb = lab_to_rgb(skin + np.array([1.2, 1.1, 1.1], np.float32) * (lab - skin))
    gains = np.array([rng.uniform(0.88, 0.96), 1.0, rng.uniform(1.04, 1.12)], np.float32)
    return np.clip(rgb * gains, 0.0, 1.0)


def clinical_rgb(
    lesion: Lesion, size_wh: tuple[int, int], rng: np.random.Generator, opts: SynthOptions = SynthOptions(),
    shift_rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, tuple[tuple[float, float], float]]:
    """The wide photo at ``size_wh`` -> (float RGB [H, W, 3], (centre, scale) of the lesion as outline_alpha takes).

    The lesion is a smooth blob of its base colour (fine structure does not resolve at this scale) under random
    global gain, colour temperature, an illumination gradient and a vignette. The gains multiply skin and lesion
    alike, so the relative darkness that the score uses is unchanged. ``opts.lighting`` > 0 widens every lighting
    range with extra draws from ``shift_rng``; ``opts.clinical_scale`` is the zoom range.
    """
    w, h = size_wh
    skin = lesion.skin
    scale = rng.uniform(*opts.clinical_scale)  # dermoscopy-frame units -> fraction of photo height
    reach = lesion.outline.max_radius * scale * h + 2.0
    cx = _uniform_within(rng, (0.2 * w, 0.8 * w), (reach, w - reach)) / w
    cy = _uniform_within(rng, (0.2 * h, 0.8 * h), (reach, h - reach)) / h
    alpha = outline_alpha(lesion.outline, size_wh, (cx, cy), scale, edge_px=max(1.5, 0.01 * h))

    base = np.array(lesion.lab, np.float32)
    mottle = smooth_noise(rng, size_wh, 6, channels=3) * np.array([1.0, 0.5, 0.5], np.float32)
    lab = np.array([skin.L, skin.a, skin.b], np.float32) + mottle
    lab += alpha[..., None] * (base - lab)
    rgb = lab_to_rgb(lab)

    xs = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    ys = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    direction = rng.uniform(0.0, 2 * math.pi)
    gradient = 1.0 + rng.uniform(0.0, 0.25) * (xs * math.cos(direction) + ys * math.sin(direction))
    vignette = 1.0 - rng.uniform(0.0, 0.3) * (xs**2 + ys**2) / 2.0
    temperature = rng.uniform(-1.0, 1.0)
    gains = rng.uniform(0.75, 1.15) * np.array([1 + 0.08 * temperature, 1.0, 1 - 0.08 * temperature], np.float32)
    if opts.lighting > 0:
        assert shift_rng is not None
        strength = opts.lighting
        direction = shift_rng.uniform(0.0, 2 * math.pi)
        ramp = xs * math.cos(direction) + ys * math.sin(direction)
        gradient = gradient + shift_rng.uniform(0.0, 0.3 * strength) * ramp
        vignette = vignette - shift_rng.uniform(0.0, 0.3 * strength) * (xs**2 + ys**2) / 2.0
        gains = gains * lighting_gains(shift_rng, strength)
    light = np.clip(gradient * vignette, 0.2, None)
    return np.clip(rgb * light[..., None] * gains, 0.0, 1.0), ((cx, cy), scale)


def lighting_gains(rng: np.random.Generator, strength: float) -> np.ndarray:
    """A shifted capture's global gain and colour cast: per-channel RGB gains ``[3]`` (strength 1: gain 0.65-1.15,
    red/blue cast up to +-12 %, a green/magenta tint up to +-5 %)."""
    gain = rng.uniform(1.0 - 0.35 * strength, 1.0 + 0.15 * strength)
    cast, tint = rng.uniform(-0.12 * strength, 0.12 * strength), rng.uniform(-0.05 * strength, 0.05 * strength)
    return (gain * np.array([1 + cast, 1 + tint, 1 - cast], np.float32)).astype(np.float32)


def _uniform_within(rng: np.random.Generator, preferred: tuple[float, float], allowed: tuple[float, float]) -> float:
    """Uniform over ``preferred`` clipped to ``allowed``; the middle of ``allowed`` when nothing is left."""
    lo, hi = max(preferred[0], allowed[0]), min(preferred[1], allowed[1])
    return float(rng.uniform(lo, hi)) if lo < hi else (allowed[0] + allowed[1]) / 2.0


# --------------------------------------------------------------------------------------------------- writing


def write_lesion(lesion: Lesion, out_dir: Path, seed: int, opts: SynthOptions) -> None:
    """Render and write every view and mask of one lesion.

    Each view draws from its own random stream, so whether one view exists never changes the pixels of another.
    """
    name = f"{lesion.lesion_id}.png"
    rngs = {view: np.random.default_rng((seed, LESION_STREAMS[view], lesion.index)) for view in VIEWS}
    shift_rng = np.random.default_rng((seed, LESION_STREAMS["shift"], lesion.index))
    extra_noise = opts.camera_noise / 255
    derm_size = (opts.dermoscopy_size, opts.dermoscopy_size)
    lab = dermoscopy_lab(lesion, working_size(derm_size)[0], rngs["dermoscopy"])
    if lesion.has_dermoscopy:
        image = _relit(add_glints(lab_to_rgb(lab), rngs["dermoscopy"]), shift_rng, opts.lighting)
        _imwrite(out_dir / "dermoscopy/images" / name,
                 finish(image, derm_size, rngs["dermoscopy"], 1 / 255 + extra_noise))
    if lesion.has_multispectral:
        image = _relit(multispectral_rgb(lesion, lab, rngs["multispectral"]), shift_rng, opts.lighting)
        _imwrite(out_dir / "multispectral/images" / name,
                 finish(image, derm_size, rngs["multispectral"], 1 / 255 + extra_noise))
    derm_mask = outline_alpha(lesion.outline, derm_size, lesion.centre, 1.0, edge_px=1.0)
    _imwrite(out_dir / "masks/dermoscopy" / name, mask_image(derm_mask))

    rng = rngs["clinical"]
    image, (centre, scale) = clinical_rgb(lesion, working_size(opts.clinical_size), rng, opts, shift_rng)
    image = finish(image, opts.clinical_size, rng, rng.uniform(1.5, 3.5) / 255 + extra_noise)
    _imwrite(out_dir / "clinical/images" / f"{lesion.lesion_id}.jpg", image,
             [cv2.IMWRITE_JPEG_QUALITY, opts.jpeg_quality])
    clin_mask = outline_alpha(lesion.outline, opts.clinical_size, centre, scale, edge_px=1.0)
    _imwrite(out_dir / "masks/clinical" / name, mask_image(clin_mask))


def _relit(rgb: np.ndarray, rng: np.random.Generator, lighting: float) -> np.ndarray:
    """A close-view capture under ``lighting_gains`` (shifted benchmarks only; unchanged when ``lighting`` is 0)."""
    return np.clip(rgb * lighting_gains(rng, lighting), 0.0, 1.0) if lighting > 0 else rgb


def _imwrite(path: Path, image: np.ndarray, params: list[int] | None = None) -> None:
    # cv2 writes no timestamps into PNG or JPEG, which keeps equal seeds byte-identical.
    if not cv2.imwrite(str(path), image, params or []):
        raise OSError(f"could not write {path}")


def write_tables(lesions: list[Lesion], out_dir: Path) -> None:
    """labels.csv (the product's label file) and synth_truth.csv (everything the score was made from)."""
    with open(out_dir / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(("lesion_id", "score", "patient_id"))
        writer.writerows((x.lesion_id, f"{x.score:.4f}", x.patient_id) for x in lesions)
    with open(out_dir / "synth_truth.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(TRUTH_COLUMNS)
        for x in lesions:
            writer.writerow((
                x.lesion_id, x.patient_id, f"{x.score:.4f}", f"{x.area_fraction:.6f}", f"{x.darkness:.6f}",
                f"{x.heterogeneity:.6f}", f"{x.skin.L:.4f}", f"{x.skin.a:.4f}", f"{x.skin.b:.4f}",
                f"{x.skin.ita_deg:.3f}", x.skin.band, int(x.has_dermoscopy), int(x.has_multispectral),
            ))  # fmt: skip


def write_readme(out_dir: Path, n: int, seed: int, opts: SynthOptions) -> None:
    """The module docstring (generator and ground-truth formula) headed by this folder's settings."""
    settings = ", ".join(f"{f.name}={getattr(opts, f.name)}" for f in fields(opts) if f.name != "overwrite")
    header = f"Written by training/synth.py with n={n}, seed={seed}, {settings}."
    (out_dir / "README.txt").write_text(header + "\n\n" + __doc__.replace("``", "").strip() + "\n")


def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Create the layout; a non-empty folder is refused unless ``overwrite``, which replaces only our own outputs."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir} is a file; --out must name a folder")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out_dir} is not empty; choose an empty or new folder, or pass --overwrite to replace the "
                f"synthetic data in it"
            )
        for name in OUTPUTS:  # never a blanket rmtree of a folder the user pointed us at
            path = out_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    for sub in ("clinical/images", "dermoscopy/images", "multispectral/images", "masks/clinical", "masks/dermoscopy"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)


def generate(out_dir: Path, n: int, seed: int, **options) -> Path:
    """Write a benchmark of ``n`` lesions to ``out_dir`` and return it; ``options`` are SynthOptions fields."""
    valid = [f.name for f in fields(SynthOptions)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown synth option(s) {unknown}; expected some of {valid}")
    if n < 1 or seed < 0:
        raise ValueError(f"need n >= 1 and seed >= 0, got n={n}, seed={seed}")
    opts, out_dir = SynthOptions(**options), Path(out_dir)
    prepare_out_dir(out_dir, opts.overwrite)
    lesions = draw_cohort(n, seed, opts)
    for lesion in lesions:
        write_lesion(lesion, out_dir, seed, opts)
    write_tables(lesions, out_dir)
    write_readme(out_dir, n, seed, opts)
    return out_dir


# --------------------------------------------------------------------------------------------------- CLI


def summary_line(out_dir: Path, seconds: float) -> str:
    """Lesions, patients and severity band counts of a written benchmark, read back from labels.csv."""
    with open(out_dir / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    bands = Counter(LABELS[severity_index(float(r["score"]))] for r in rows)
    counts = " / ".join(f"{name} {bands[name]}" for name in LABELS)
    patients = len({r["patient_id"] for r in rows})
    return f"synth: {len(rows)} lesions, {patients} patients, {counts}, {seconds:.1f} s -> {out_dir}"


def _size_wh(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 384x288, got {text!r}") from None
    return w, h


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = SynthOptions()
    p = argparse.ArgumentParser(prog="python -m training.synth", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder to write (must be empty unless --overwrite)")
    p.add_argument("--n", type=int, required=True, help="number of lesions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clinical-size", type=_size_wh, default=defaults.clinical_size, help="WxH, default 384x288")
    p.add_argument("--dermoscopy-size", type=int, default=defaults.dermoscopy_size, help="side of the square views")
    p.add_argument("--dermoscopy-fraction", type=float, default=defaults.dermoscopy_fraction)
    p.add_argument("--multispectral-fraction", type=float, default=defaults.multispectral_fraction)
    p.add_argument("--patients-max-lesions", type=int, default=defaults.patients_max_lesions)
    shift = p.add_argument_group("shifted benchmark (all off by default; see the module docstring)")
    shift.add_argument("--shifted", action="store_true", help=f"the documented shifted benchmark: {SHIFTED}")
    shift.add_argument("--lighting", type=float, help="0 = off, 1 = strong lighting shift")
    shift.add_argument("--clinical-scale", type=_pair, metavar="LOW,HIGH", help="lesion zoom in the clinical photo "
                                                                                "(default 0.35,0.55)")
    shift.add_argument("--camera-noise", type=float, help="extra sensor noise std in 8-bit levels (default 0)")
    shift.add_argument("--jpeg-quality", type=int, help="clinical JPEG quality (default 92)")
    shift.add_argument("--ita-range", type=_pair, metavar="LOW,HIGH", help="skin-tone ITA range in degrees "
                                                                           "(default -50,66)")
    shift.add_argument("--shape-irregularity", type=float, help="scale of the outline harmonics (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace the synthetic data already in --out")
    return p.parse_args(argv)


def _pair(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH such as 0.25,0.7, got {text!r}") from None
    return low, high


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    options = dict(SHIFTED) if args.shifted else {}
    options.update({f.name: getattr(args, f.name) for f in fields(SynthOptions)
                    if getattr(args, f.name, None) is not None})
    start = time.perf_counter()
    out_dir = generate(args.out, args.n, args.seed, **options)  # a user's mistake: one line via model.cli.run
    print(summary_line(out_dir, time.perf_counter() - start))


if __name__ == "__main__":
    run(main)
