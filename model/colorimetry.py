"""Colorimetric reference: segment a pigmented lesion, measure it against the surrounding skin, score it 0..1.

No learning, only numpy and OpenCV, so weak labelling (``training.weak_labels``), evaluation by skin tone and
reports share one definition. :func:`measure` is the entry point (:func:`lesion_mask` gives the same mask and the
same failures without the colour measurements, for ``model.quality``'s per-request checks)::

    RGB image -> working copy (longest side WORK_SIDE px)
      -> segment_lesion: shades-of-gray colour constancy -> L* -> hair suppression (grey closing) -> blur
         -> divide by the lighting (a robust quadratic fit) -> Otsu, capped a few skin stds below the skin
         (darker = lesion) -> opening, closing -> the component nearest the centre -> fill holes
      -> surrounding skin: a ring around the lesion, without the pixels Otsu called dark
      -> CIELAB means of lesion and skin on the *uncorrected* image (colour constancy would pull the skin
         towards grey and destroy its ITA), dL*, dE*ab (CIE76), ITA of the skin and its band
      -> severity in [0, 1]: area score x intensity score (see :data:`SEVERITY`)

Known failure cases of the segmentation (why a weak label is a reference, not a diagnosis):

* **Hair**: thick dark hair crossing the lesion survives the grey closing and can join the lesion or the ring;
  hair is not removed from the CIELAB means.
* **Dermoscope vignette**: dark corners or a black circular field stop are dark to Otsu. Components touching the
  image border are down-weighted and dark pixels are excluded from the skin ring, but a vignette that reaches
  the lesion merges with it and inflates the area.
* **Very dark skin, faint lesion**: when the lesion is only a few L* units darker than the skin, Otsu splits
  skin texture or the lighting gradient instead; :func:`measure` then raises :class:`SegmentationError`
  ("low contrast") rather than return a meaningless mask.
* **Lesion touching the border**: it is down-weighted like a vignette (it wins only when nothing central is
  dark), its area is truncated, and the skin ring is partly outside the image.
* **Several lesions**: only the one nearest the centre (weighted by size) is kept; the others are left out of
  the area and out of the skin ring.
* **Area in a clinical photo** is relative to the photo's framing, not to a physical size; without a ruler the
  same lesion scores differently when photographed from further away. Dermoscopy frames are comparable.
* Hypopigmented (lighter than skin) lesions are out of scope: the lesion is always the darker class.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

VERSION = "colorimetric-v1"
"""Bump when the segmentation or the severity formula changes; weak labels carry it (``weak:colorimetric-v1``)."""

# Skin-tone bands of the individual typology angle (Chardon et al. 1991; Del Bino et al. 2013).
ITA_BANDS: tuple[tuple[str, float], ...] = (
    ("very_light", 55.0),
    ("light", 41.0),
    ("intermediate", 28.0),
    ("tan", 10.0),
    ("brown", -30.0),
    ("dark", -math.inf),
)
"""(band, lower bound) from light to dark: a skin is in the first band whose bound its ITA exceeds, so a value on
a boundary belongs to the darker band (55 is light, -30 is dark)."""
SKIN_TONE_BANDS: tuple[str, ...] = tuple(name for name, _ in ITA_BANDS)

# Segmentation, in pixels of the working copy.
WORK_SIDE = 256  # longest side the analysis runs at; the returned mask is at the input's size
SHADES_OF_GRAY_P = 6  # Minkowski norm of the illuminant estimate (Finlayson & Trezzi 2004); p=1 is gray-world
HAIR_CLOSING_PX = 5  # a grey closing this wide removes thin dark lines (hair) before thresholding
BLUR_SIGMA_PX = 1.5
SKIN_SPREAD_K = 5.0  # a lesion pixel is at least this many robust skin stds below the illumination surface
FIT_STRIDE = 7  # the illumination surface is fitted on every 7th pixel (coprime with most widths: no aliasing)
MIN_AREA_FRACTION = 0.002  # smaller masks are noise: "empty"
MAX_AREA_FRACTION = 0.90  # larger masks are the whole image: "no skin"
MIN_RELATIVE_CONTRAST = 0.04  # (skin L* - lesion L*) / skin L* below this is "low contrast"
MIN_SKIN_PIXELS = 50
BORDER_PENALTY = 0.25  # score factor of a component that touches the image border (vignette, cut-off lesion)
RUNS_FROM_RADIUS = 24  # disks this large (on a WORK_SIDE copy) are dilated run by run (faster than cv2.dilate, same
                      # pixels); on a smaller copy the crossover shrinks with it (12 on the quality checks' 128 px)


@dataclass(frozen=True)
class SeverityConstants:
    """The colorimetric severity, in the spirit of mMASI (area x darkness) with MASI's heterogeneity term::

        area_score  = clip(area_fraction / area_full, 0, 1)
        darkness    = clip((relative_deficit - deficit_zero) / (deficit_full - deficit_zero), 0, 1)
                      with relative_deficit = (skin L* - lesion L*) / skin L*
        heterogeneity = clip(lesion_L_std / (heterogeneity_full * skin L*), 0, 1)
        severity    = (area_score * (darkness + heterogeneity) / 2) ** power

    The darkness is relative to the skin's own lightness, so a lesion equally visible on light and on dark skin
    scores the same (dL* alone would rank every lesion on dark skin as mild). ``lesion_L_std`` is a robust
    standard deviation of L* inside the eroded lesion (structure: network, dots, blotches). ``power`` < 1 only
    spreads the scores over the severity bands; it does not change their ranking. The constants were set on the
    synthetic benchmark (``training/synth.py``), whose lesions span area 0.02-0.36 of the dermoscopy field and a
    relative deficit of 0.10-0.55; on real images they are a documented convention, not a clinical calibration.
    """

    area_full: float = 0.36
    deficit_zero: float = 0.10
    deficit_full: float = 0.55
    heterogeneity_full: float = 0.12
    power: float = 0.6


SEVERITY = SeverityConstants()


class SegmentationError(ValueError):
    """No usable lesion mask; ``reason`` is a short phrase for reports (e.g. ``"low contrast"``)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"lesion segmentation failed: {reason}" + (f" ({detail})" if detail else ""))
        self.reason = reason


@dataclass(frozen=True, eq=False)
class ColorimetryResult:
    """Measurements of one lesion. CIELAB has L* in 0..100; ``delta_L`` > 0 means the lesion is darker."""

    mask: np.ndarray  # [H, W] bool at the input image's size, True = lesion
    area_fraction: float  # lesion pixels / image pixels
    lesion_lab: tuple[float, float, float]
    skin_lab: tuple[float, float, float]
    delta_L: float  # skin L* - lesion L*
    delta_E: float  # CIE76 distance between the lesion and skin means
    lesion_L_std: float  # robust std of L* inside the lesion
    ita: float  # of the surrounding skin, degrees
    skin_tone_band: str
    area_score: float
    darkness_score: float
    heterogeneity_score: float
    severity: float


# --------------------------------------------------------------------------------------------------- colour


def ita_degrees(L: float, b: float) -> float:
    """Individual typology angle ``arctan((L* - 50) / b*)`` in degrees, in [-90, 90].

    Computed as ``atan2(L* - 50, b*)`` with b* floored at a tiny positive value: equal to the arctan for skin
    (b* > 0), +-90 instead of a division by zero at b* = 0, and saturated at +-90 for the non-skin b* < 0.
    """
    return math.degrees(math.atan2(L - 50.0, max(b, 1e-9)))


def ita_band(ita: float) -> str:
    """Skin-tone band of an ITA in degrees (see :data:`ITA_BANDS`)."""
    if math.isnan(ita):
        raise ValueError("ITA is NaN; measure the skin colour first")
    return next((name for name, lower in ITA_BANDS if ita > lower), SKIN_TONE_BANDS[-1])


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB ``[H, W, 3]`` uint8 or float in [0, 1] -> float32 CIELAB ``[H, W, 3]`` (D65, L* in 0..100)."""
    if rgb.dtype == np.uint8:
        rgb = rgb.astype(np.float32) / 255.0
    return cv2.cvtColor(rgb.astype(np.float32, copy=False), cv2.COLOR_RGB2Lab)


def illuminant(rgb: np.ndarray, p: int = SHADES_OF_GRAY_P) -> np.ndarray:
    """Shades-of-grey illuminant estimate of float32 RGB ``[H, W, 3]`` in [0, 1]: each channel's Minkowski p-mean,
    ``[3]`` float64."""
    powered = rgb.copy()
    for _ in range(p - 1):  # products and cv2.mean: np.power and np.mean over two axes cost much more
        np.multiply(powered, rgb, out=powered)
    return np.power(np.asarray(cv2.mean(powered)[:3]), 1.0 / p)


def shades_of_gray(rgb: np.ndarray, p: int = SHADES_OF_GRAY_P) -> np.ndarray:
    """Colour constancy: float RGB ``[H, W, 3]`` in [0, 1] -> the same image under a neutral illuminant estimate.

    Each channel is scaled so that its Minkowski p-mean equals the mean over channels.
    """
    rgb = np.ascontiguousarray(rgb, dtype=np.float32)
    h, w, _ = rgb.shape
    estimate = illuminant(rgb, p)
    gains = (estimate.mean() / np.maximum(estimate, 1e-6)).astype(np.float32)
    balanced = rgb.reshape(h, w * 3) * np.tile(gains, w)  # one gain per channel, without broadcasting a 3-axis
    return np.clip(balanced, 0.0, 1.0, out=balanced).reshape(h, w, 3)


# --------------------------------------------------------------------------------------------------- segmentation


def segment_lesion(rgb: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Float RGB ``[H, W, 3]`` in [0, 1] -> (lesion mask, every dark pixel), both ``[H, W]`` bool.

    The second mask lets the caller keep other dark things (hair, other lesions, vignette) out of the skin.
    ``scale`` is the working copy's longest side / WORK_SIDE: the filters' sizes (set in pixels of a WORK_SIDE
    copy) shrink with it. Raises :class:`SegmentationError` when no dark component exists.
    """
    lightness = rgb_to_lab(shades_of_gray(rgb))[..., 0]
    lightness = cv2.morphologyEx(lightness, cv2.MORPH_CLOSE, _disk(_scaled_px(HAIR_CLOSING_PX, scale)))
    lightness = cv2.GaussianBlur(lightness, (0, 0), BLUR_SIGMA_PX * scale)
    dark = dark_pixels(lightness)
    cleaned = cv2.morphologyEx(dark.astype(np.uint8), cv2.MORPH_OPEN, _disk(_scaled_px(3, scale)))
    cleaned = cv2.morphologyEx(cleaned, cv2.MORPH_CLOSE, _disk(_scaled_px(5, scale)))
    return _fill_holes(_central_component(cleaned > 0)), dark


def dark_pixels(lightness: np.ndarray) -> np.ndarray:
    """L* ``[H, W]`` -> ``[H, W]`` bool, True where darker than the skin: Otsu on L* relative to the lighting.

    Dividing by the fitted illumination removes gradients and vignetting. A small lesion barely moves the
    histogram and Otsu then splits the skin's own mottle, so a pixel must also lie SKIN_SPREAD_K robust skin
    stds below the illumination.
    """
    background, skin_std = illumination(lightness)
    relative = np.clip(lightness / np.maximum(background, 1.0) * 200.0 + 0.5, 0, 255).astype(np.uint8)  # skin ~200
    otsu, _ = cv2.threshold(relative, 0, 255, cv2.THRESH_BINARY_INV | cv2.THRESH_OTSU)
    clearly_below = 200.0 * (1.0 - SKIN_SPREAD_K * skin_std / max(float(_median(background)), 1.0))
    return relative <= min(otsu, clearly_below)


def illumination(lightness: np.ndarray) -> tuple[np.ndarray, float]:
    """The skin's L* without the lesion: (a quadratic surface ``[H, W]`` fitted to L* robustly, the skin's robust
    std around it).

    A photo's lighting gradient and vignette are smooth; a lesion is a dark outlier. The fit starts as a plane
    on the lighter half of the pixels (a lesion is less than half the image; a quadratic fitted with a large
    central lesion in it bends into a bowl under the lesion and never lets go), then refits on the pixels no
    more than 2 robust stds below the last fit.
    """
    h, w = lightness.shape
    columns = _fit_columns(h, w)  # [6, N] float64
    values = lightness.ravel()[::FIT_STRIDE].astype(np.float64)
    keep = np.ones_like(values, dtype=bool)
    spread = 0.0
    for step, terms in enumerate((3, 3, 6, 6, 6)):
        coef = _least_squares(columns[:terms], values, keep)
        residual = values - np.einsum("i,in->n", coef, columns[:terms])
        if step == 0:
            keep = residual >= _median(residual)
            continue
        kept = residual[keep]
        spread = max(1.4826 * float(_median(np.abs(kept - _median(kept)))), 0.25)
        keep = residual > -2.0 * spread
    return _quadratic_surface(coef, h, w), spread


@functools.lru_cache(maxsize=8)
def _fit_columns(h: int, w: int) -> np.ndarray:
    """The fit's design ``[6, N]`` float64, read-only: (1, x, y, x^2, xy, y^2) at every ``FIT_STRIDE``-th pixel of
    an ``[h, w]`` image (x, y = column / w - 0.5, row / h - 0.5). It depends on the size alone, and a served worker
    sees the same few sizes, so it is made once per size."""
    index = np.arange(0, h * w, FIT_STRIDE)  # a smooth surface needs few pixels
    x, y = index % w / w - 0.5, index // w / h - 0.5
    columns = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y])
    columns.flags.writeable = False
    return columns


def _median(values: np.ndarray) -> float:
    """``np.median(values)`` (the same value and dtype) for an array without NaN, without np.median's per-call
    overhead, which at the illumination fit's ~2000 samples is as much as the selection itself."""
    flat = values.ravel()
    half = flat.size // 2
    if flat.size % 2:
        return np.partition(flat, half)[half]
    part = np.partition(flat, (half - 1, half))
    return (part[half - 1] + part[half]) / 2


def _least_squares(columns: np.ndarray, values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Coefficients ``[K]`` minimising ``|coef @ columns - values|`` over the ``keep`` samples, for ``columns [K, N]``
    float64 (K <= 6), by the normal equations (well conditioned: the columns are low powers of coordinates in
    [-0.5, 0.5]).

    Not ``np.linalg.lstsq``: its BLAS threads, on a fit this small, cost several times the arithmetic and compete
    with the model's threads in a serving worker. OpenCV's products of a few rows run on one thread.
    """
    kept = columns * keep  # [K, N], zero columns where not kept
    gram = cv2.mulTransposed(kept, False)  # kept @ kept.T, [K, K]
    return np.linalg.solve(gram, cv2.gemm(kept, values[:, None], 1.0, None, 0.0).ravel())


def _quadratic_surface(coef: np.ndarray, h: int, w: int) -> np.ndarray:
    """``coef`` of the first 3 or 6 of (1, x, y, x^2, xy, y^2) -> the surface ``[H, W]`` float32 over the pixel grid
    (x, y = column / W - 0.5, row / H - 0.5)."""
    c = np.zeros(6)
    c[:len(coef)] = coef
    x, y = np.arange(w) / w - 0.5, np.arange(h) / h - 0.5
    rows = (c[0] + c[2] * y + c[5] * y * y).astype(np.float32)[:, None]  # the terms without x, [H, 1]
    slopes = (c[1] + c[4] * y).astype(np.float32)[:, None]  # the coefficient of x in each row, [H, 1]
    return rows + slopes * x.astype(np.float32) + (c[3] * x * x).astype(np.float32)


def _central_component(binary: np.ndarray) -> np.ndarray:
    """Keep the component with the largest ``area / (1 + (d / r)^2)`` (d: centroid to image centre, r: a quarter
    of the shorter side), with components touching the border down-weighted by BORDER_PENALTY."""
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    if count <= 1:
        raise SegmentationError("empty", "no pixel is darker than the Otsu threshold")
    h, w = binary.shape
    x, y, bw, bh, area = (stats[1:, i].astype(np.float64) for i in range(5))
    distance = np.hypot(centroids[1:, 0] - (w - 1) / 2, centroids[1:, 1] - (h - 1) / 2)
    touches = (x <= 0) | (y <= 0) | (x + bw >= w) | (y + bh >= h)
    score = area / (1.0 + (distance / (0.25 * min(h, w))) ** 2) * np.where(touches, BORDER_PENALTY, 1.0)
    return labels == 1 + int(np.argmax(score))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Background = what a flood fill from outside reaches; everything else belongs to the lesion."""
    padded = np.pad(mask.astype(np.uint8), 1)
    flood = np.zeros((padded.shape[0] + 2, padded.shape[1] + 2), np.uint8)
    cv2.floodFill(padded, flood, (0, 0), 2)
    return padded[1:-1, 1:-1] != 2


def _disk(diameter: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (diameter, diameter))


def _scaled_px(diameter: int, scale: float) -> int:
    """A filter's odd diameter on a WORK_SIDE copy -> on a copy ``scale`` times that size, at least 3 (a 1-px disk
    filters nothing): 3 and 5 stay 3 and 5 at scale 1, and both become 3 at scale 0.5."""
    return max(3, 2 * round((diameter * scale - 1) / 2) + 1)


def skin_ring(lesion: np.ndarray, dark: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Surrounding skin ``[H, W]`` bool: a ring from 0.15 to 0.65 equivalent radii outside the lesion, without
    Otsu-dark pixels; everything outside the gap when the ring is too small (a lesion filling the frame).
    ``scale`` as in :func:`segment_lesion`: the least skin, MIN_SKIN_PIXELS on a WORK_SIDE copy, shrinks with
    the copy's area."""
    radius = math.sqrt(lesion.sum() / math.pi)
    gap = max(2, round(0.15 * radius))
    width = max(4, round(0.5 * radius))
    inner, outer = _dilations(lesion, (gap, gap + width), scale)
    ring = outer & ~inner & ~dark
    least = round(MIN_SKIN_PIXELS * scale * scale)
    if ring.sum() < least:
        ring = ~inner & ~dark
    if ring.sum() < least:
        raise SegmentationError("no skin", f"only {int(ring.sum())} skin pixels around the lesion")
    return ring


def _dilations(mask: np.ndarray, radii: tuple[int, ...], scale: float = 1.0) -> list[np.ndarray]:
    """``mask [H, W]`` bool dilated by a disk of each radius (``_disk(2 r + 1)``, as ``cv2.dilate`` does), each
    ``[H, W]`` bool: :func:`_dilate_crop` for a small disk, :func:`_dilate_runs` from ``RUNS_FROM_RADIUS * scale`` on
    (``scale`` as in :func:`segment_lesion`; both give the same pixels, only the cost differs)."""
    return [_dilate_runs(mask, r) if r >= RUNS_FROM_RADIUS * scale else _dilate_crop(mask, r) for r in radii]


def _dilate_crop(mask: np.ndarray, radius: int) -> np.ndarray:
    """``cv2.dilate`` on the mask's bounding box widened by ``radius``: nothing further away can be reached, and a
    small lesion's box is a fraction of the image."""
    x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
    rows = slice(max(0, y - radius), min(mask.shape[0], y + h + radius))
    cols = slice(max(0, x - radius), min(mask.shape[1], x + w + radius))
    out = np.zeros(mask.shape, dtype=bool)
    out[rows, cols] = cv2.dilate(mask[rows, cols].astype(np.uint8), _disk(2 * radius + 1)) > 0
    return out


def _dilate_runs(mask: np.ndarray, radius: int) -> np.ndarray:
    """The same dilation row by row: each run of mask pixels in a row, widened by the disk's half-width at each
    row offset, is painted into a difference array that a cumulative sum along the rows turns back into pixels.

    ``cv2.dilate``'s cost grows with the disk's area (the ring around a large dermoscopy lesion needs a disk over
    100 px wide); this one's with the number of runs times the disk's height, and the pixels are the same
    (docs/trust.md, "What the trust fields cost").
    """
    h, w = mask.shape
    half = (_disk(2 * radius + 1).sum(axis=1).astype(np.int64) - 1) // 2  # [2R+1] half-width at offset -R..R
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = mask
    edges = np.flatnonzero(np.diff(padded, axis=1))  # run starts and (exclusive) ends alternate, row by row
    row, start, end = edges[0::2] // (w + 1), edges[0::2] % (w + 1), edges[1::2] % (w + 1)
    rows = row[:, None] + np.arange(-radius, radius + 1)  # [runs, 2R+1]
    inside = (rows >= 0) & (rows < h)
    offsets = rows * (w + 1)
    lo = (offsets + np.clip(start[:, None] - half, 0, w))[inside]
    hi = (offsets + np.clip(end[:, None] + half, 0, w))[inside]
    size = h * (w + 1)
    changes = np.bincount(lo, minlength=size) - np.bincount(hi, minlength=size)
    return np.cumsum(changes.reshape(h, w + 1), axis=1)[:, :w] > 0


# --------------------------------------------------------------------------------------------------- measurement


def measure(image: np.ndarray, constants: SeverityConstants = SEVERITY) -> ColorimetryResult:
    """Segment and measure the lesion in an sRGB image ``[H, W, 3]`` uint8 (or a ``PIL.Image``).

    Raises:
        SegmentationError: the mask is empty, covers (nearly) the whole image, has too little contrast with the
            skin, or no skin is left around it. ``.reason`` says which.
    """
    rgb = _rgb_array(image)
    work = working_copy(rgb)
    lab = rgb_to_lab(work)
    lesion, skin, _ = _lesion_and_skin(work, lab)
    area_fraction = float(lesion.mean())
    lesion_lab, skin_lab = _mean(lab, lesion), _mean(lab, skin)
    delta_L = float(skin_lab[0] - lesion_lab[0])
    relative_deficit = delta_L / max(float(skin_lab[0]), 1e-6)
    lesion_L_std = _robust_std(lab[..., 0][_eroded(lesion)])
    ita = ita_degrees(float(skin_lab[0]), float(skin_lab[2]))
    scores = severity_scores(area_fraction, relative_deficit, lesion_L_std / float(skin_lab[0]), constants)
    return ColorimetryResult(
        mask=resize_mask(lesion, rgb.shape[:2]),
        area_fraction=area_fraction,
        lesion_lab=tuple(float(v) for v in lesion_lab),
        skin_lab=tuple(float(v) for v in skin_lab),
        delta_L=delta_L,
        delta_E=float(np.linalg.norm(skin_lab - lesion_lab)),
        lesion_L_std=lesion_L_std,
        ita=ita,
        skin_tone_band=ita_band(ita),
        area_score=scores[0],
        darkness_score=scores[1],
        heterogeneity_score=scores[2],
        severity=scores[3],
    )


def lesion_mask(image: np.ndarray, side: int = WORK_SIDE) -> np.ndarray:
    """The lesion mask ``[H, W]`` bool that :func:`measure` returns for ``image``, and the same
    :class:`SegmentationError` when it finds none, without measuring the lesion's colour, texture and severity.

    ``side`` < WORK_SIDE segments a smaller working copy (longest side at most ``side``) with the filters scaled
    to it: several times cheaper, and nearly the same mask (docs/trust.md, "The lesion checks at 128 px"), still
    returned at the input's size.
    """
    rgb = _rgb_array(image)
    work = working_copy(rgb, side)
    lesion, _ = find_lesion(work, cv2.cvtColor(work, cv2.COLOR_RGB2Lab), side / WORK_SIDE)
    return resize_mask(lesion, rgb.shape[:2])


def find_lesion(work: np.ndarray, lab: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, float]:
    """A working copy (:func:`working_copy`) and its CIELAB ``[h, w, 3]`` -> the lesion mask ``[h, w]`` bool and its
    relative contrast ``(skin L* - lesion L*) / skin L*`` (how much darker than the skin around it), or the
    :class:`SegmentationError` of :func:`measure`. ``scale``: the copy's nominal side / WORK_SIDE (what
    ``model.quality`` needs in every served answer)."""
    lesion, _, contrast = _lesion_and_skin(work, lab[..., 0], scale)
    return lesion, contrast


def _lesion_and_skin(work: np.ndarray, lab: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, float]:
    """Working copy ``[h, w, 3]`` and its CIELAB ``[h, w, 3]`` (or only L* ``[h, w]``) -> (lesion, surrounding skin)
    ``[h, w]`` bool and the relative contrast ``(skin L* - lesion L*) / skin L*``, or the :class:`SegmentationError`
    of an empty, whole-image, low-contrast or skinless mask. ``scale``: the working copy's nominal side / WORK_SIDE
    (:func:`segment_lesion`)."""
    lesion, dark = segment_lesion(work, scale)
    area_fraction = float(lesion.mean())
    if area_fraction < MIN_AREA_FRACTION:
        raise SegmentationError("empty", f"area fraction {area_fraction:.4f} < {MIN_AREA_FRACTION}")
    if area_fraction > MAX_AREA_FRACTION:
        raise SegmentationError("whole image", f"area fraction {area_fraction:.3f} > {MAX_AREA_FRACTION}")
    skin = skin_ring(lesion, dark, scale)
    lesion_L, skin_L = float(_mean(lab, lesion)[0]), float(_mean(lab, skin)[0])
    contrast = (skin_L - lesion_L) / max(skin_L, 1e-6)
    if contrast < MIN_RELATIVE_CONTRAST:
        raise SegmentationError("low contrast", f"lesion L* {lesion_L:.1f} vs skin L* {skin_L:.1f}")
    return lesion, skin, contrast


def _mean(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-channel mean ``[C]`` float64 of ``image [H, W, C]`` (or ``[H, W]``: ``[1]``) over ``mask`` (cv2.mean:
    summed in float64, without copying the selected pixels)."""
    channels = 1 if image.ndim == 2 else image.shape[2]
    return np.asarray(cv2.mean(image, mask.astype(np.uint8))[:channels])


def severity_scores(area_fraction: float, relative_deficit: float, relative_std: float,
                    constants: SeverityConstants = SEVERITY) -> tuple[float, float, float, float]:
    """(area score, darkness score, heterogeneity score, severity), each in [0, 1]; see :class:`SeverityConstants`.

    ``relative_deficit`` is (skin L* - lesion L*) / skin L*; ``relative_std`` is the lesion's L* std / skin L*.
    """
    c = constants
    area = _unit(area_fraction / c.area_full)
    darkness = _unit((relative_deficit - c.deficit_zero) / (c.deficit_full - c.deficit_zero))
    heterogeneity = _unit(relative_std / c.heterogeneity_full)
    severity = (area * (darkness + heterogeneity) / 2.0) ** c.power
    return area, darkness, heterogeneity, float(severity)


def _unit(x: float) -> float:
    return float(min(max(x, 0.0), 1.0))


def _rgb_array(image: np.ndarray) -> np.ndarray:
    rgb = np.asarray(image)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {rgb.shape}; convert it with .convert('RGB')")
    return rgb


def working_copy(rgb: np.ndarray, side: int = WORK_SIDE) -> np.ndarray:
    """uint8 RGB -> float32 in [0, 1], longest side at most ``side`` (area-averaged, so noise shrinks too)."""
    h, w = rgb.shape[:2]
    factor = side / max(h, w)
    if factor < 1.0:
        rgb = cv2.resize(rgb, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)
    return rgb.astype(np.float32) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float32, copy=False)


def _eroded(mask: np.ndarray) -> np.ndarray:
    """The lesion without its blurred rim (which would count as texture); the mask itself if that empties it."""
    inner = cv2.erode(mask.astype(np.uint8), _disk(5)) > 0
    return inner if inner.sum() >= MIN_SKIN_PIXELS else mask


def _robust_std(values: np.ndarray) -> float:
    """Half the 16-84 percentile spread: the std of a normal, but blind to a few glints or hairs."""
    p16, p84 = np.percentile(values, (16.0, 84.0))
    return float(p84 - p16) / 2.0


def resize_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if mask.shape == hw:
        return mask
    return cv2.resize(mask.astype(np.uint8), (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST) > 0
