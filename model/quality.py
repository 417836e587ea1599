"""Image-quality warnings for one decoded view: blurred, under- or over-exposed, lesion not found, lesion touching
the border, lesion too small. They are warnings: the image is still scored.

The blur and exposure checks run on a working copy of the decoded image (longest side at most
``model.colorimetry.WORK_SIDE``, the size colorimetry's weak labels use), the lesion checks on a copy half that size
(``LESION_SIDE``, with the segmentation's filters scaled to it), so a check costs a few milliseconds whatever the
upload size. Blur needs the larger copy (halving the image hides a slight blur); the lesion does not (its warnings
are nearly the same at either size, and the smaller copy costs a fraction; docs/trust.md measures both):

* ``blurred``: the no-reference blur measure of Crete-Roffet et al. (2007): re-blur the grey image with a 9-tap
  box filter along each axis and measure how much of its neighbour-difference energy survives. A sharp image loses
  much of it (measure near 0), an already blurred one little (near 1). Above ``BLUR_LIMIT[modality]`` -> warning
  (a clinical photo of smooth skin has less fine detail than a dermoscopy view even when sharp).
* ``underexposed``: more than ``CLIPPED_SHARE`` of the pixels at or below ``DARK_LUMA`` of 8-bit luma, or a median
  luma below ``UNDER_MEDIAN``; ``overexposed``: the same at or above ``BRIGHT_LUMA``, or a median above
  ``OVER_MEDIAN``.
* ``lesion_not_found`` (``model.colorimetry`` finds no lesion: empty mask, the whole image, or too little
  contrast); ``lesion_touches_border`` (the lesion mask reaches the image edge: it may be cut off);
  ``lesion_too_small`` (lesion area below ``MIN_LESION_AREA`` of the image for that modality).

The limits were chosen on the embedded synthetic benchmark and on blurred / darkened / brightened copies of it;
docs/trust.md gives the measured rates.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from model import colorimetry

WARNINGS: tuple[str, ...] = ("blurred", "underexposed", "overexposed", "lesion_not_found", "lesion_touches_border",
                             "lesion_too_small")
BLUR_LIMIT: dict[str, float] = {"clinical": 0.30, "dermoscopy": 0.38, "multispectral": 0.38}
"""Just above the 99th percentile of the sharp synthetic views of each modality (docs/trust.md)."""
BLUR_TAPS = 9
DARK_LUMA = 10  # of 255
BRIGHT_LUMA = 245
CLIPPED_SHARE = 0.25
UNDER_MEDIAN = 0.15
OVER_MEDIAN = 0.92
LESION_SIDE = colorimetry.WORK_SIDE // 2
"""Longest side of the copy the lesion checks segment (``colorimetry.lesion_mask(..., side=LESION_SIDE)``)."""
APPEARANCE: tuple[str, ...] = ("log_illuminant_r", "log_illuminant_g", "log_illuminant_b", "spread_L", "spread_a",
                                "spread_b", "lesion_contrast")
"""What :func:`check` also measures of a view for the out-of-distribution score (``model.trust``): the light and
scene's colour and brightness (``colorimetry.illuminant``, the segmentation's shades-of-grey estimate, log), the
standard deviations of CIELAB L*, a* and b* over the image, and the lesion's relative contrast
``(skin L* - lesion L*) / skin L*`` (0 when no lesion is found). Colour constancy divides the first ones out before
the encoders see the image (``model.preprocessing``), so the encoder features alone cannot tell a flat field of
any colour, or bare skin, from the skin around a small lesion."""
MIN_LESION_AREA: dict[str, float] = {"clinical": 0.002, "dermoscopy": 0.01, "multispectral": 0.01}
"""Lesion area / image area below which a lesion is "too small" to read, per modality (a clinical photo frames a
lesion much smaller than a dermoscope does)."""


@dataclass(frozen=True)
class QualityReport:
    """The measurements behind the warnings of one view (kept for docs and tests)."""

    blur: float
    median_luma: float
    dark_share: float
    bright_share: float
    lesion_area: float | None  # None: no lesion found
    touches_border: bool
    warnings: tuple[str, ...]
    appearance: tuple[float, ...]  # APPEARANCE, in that order


def check(image: Image.Image, modality: str) -> QualityReport:
    """Measure one decoded RGB view and list its warnings (in ``WARNINGS`` order)."""
    pixels = np.asarray(reduced(image))  # uint8 [H, W, 3]
    grey = cv2.cvtColor(_unit_float(pixels), cv2.COLOR_RGB2GRAY)
    blur = blur_measure(grey)
    median, dark, bright = exposure(pixels)
    small = colorimetry.working_copy(pixels, LESION_SIDE)  # float32 in [0, 1]
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2Lab)
    area, touches, contrast = _lesion(small, lab, pixels.shape[:2])
    found = {
        "blurred": blur > BLUR_LIMIT.get(modality, max(BLUR_LIMIT.values())),
        "underexposed": dark > CLIPPED_SHARE or median < UNDER_MEDIAN,
        "overexposed": bright > CLIPPED_SHARE or median > OVER_MEDIAN,
        "lesion_not_found": area is None,
        "lesion_touches_border": touches,
        "lesion_too_small": area is not None and area < MIN_LESION_AREA.get(modality, 0.0),
    }
    return QualityReport(blur, median, dark, bright, area, touches, tuple(w for w in WARNINGS if found[w]),
                         (*colour_statistics(small, lab), contrast))


def warnings_for(images: dict[str, Image.Image]) -> list[dict[str, str]]:
    """``{modality: decoded view}`` -> ``[{"modality", "warning"}, ...]`` in modality then ``WARNINGS`` order."""
    return [{"modality": m, "warning": w} for m, img in images.items() for w in check(img, m).warnings]


def exposure(pixels: np.ndarray) -> tuple[float, float, float]:
    """uint8 RGB ``[H, W, 3]`` -> (median luma in [0, 1], share of pixels at or below ``DARK_LUMA``, share at or
    above ``BRIGHT_LUMA``), all from one histogram of the 8-bit luma (much cheaper than a median of float luma)."""
    luma = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY)
    at_most = np.cumsum(np.bincount(luma.ravel(), minlength=256))  # at_most[v]: pixels with luma <= v
    n = luma.size
    middle = np.searchsorted(at_most, [(n - 1) // 2, n // 2], side="right")  # the luma of those 0-based ranks
    return float(middle.mean()) / 255, float(at_most[DARK_LUMA]) / n, float(n - at_most[BRIGHT_LUMA - 1]) / n


def blur_measure(grey: np.ndarray) -> float:
    """Crete-Roffet blur measure of a float grey image ``[H, W]``: 0 sharp .. 1 blurred (the worse of both axes)."""
    grey = np.ascontiguousarray(grey, dtype=np.float32)
    worst = 0.0
    for axis in (0, 1):
        kernel = (1, BLUR_TAPS) if axis == 1 else (BLUR_TAPS, 1)
        reblurred = cv2.blur(grey, kernel[::-1], borderType=cv2.BORDER_REFLECT)  # cv2 takes (width, height)
        d_sharp, d_blur = _neighbour_differences(grey, axis), _neighbour_differences(reblurred, axis)
        total = cv2.sumElems(d_sharp)[0]  # OpenCV sums in float64, on one pass without temporaries
        if total <= 0.0:  # a flat image has no detail at all
            return 1.0
        lost = cv2.sumElems(cv2.max(cv2.subtract(d_sharp, d_blur), 0.0))[0]
        worst = max(worst, (total - lost) / total)
    return worst


def _neighbour_differences(image: np.ndarray, axis: int) -> np.ndarray:
    """``|image[i + 1] - image[i]|`` along ``axis`` of a float32 ``[H, W]``: ``[H - 1, W]`` or ``[H, W - 1]``."""
    if axis == 0:
        return cv2.absdiff(image[1:], image[:-1])
    return cv2.absdiff(image[:, 1:], image[:, :-1])


def working_copy(image: Image.Image) -> np.ndarray:
    """RGB float32 ``[H, W, 3]`` in [0, 1], longest side at most ``colorimetry.WORK_SIDE`` (area-averaged)."""
    return _unit_float(np.asarray(reduced(image)))


def _unit_float(pixels: np.ndarray) -> np.ndarray:
    """uint8 -> float32 / 255 (numpy converting a PIL image straight to float32 costs much more)."""
    return np.divide(pixels, np.float32(255.0), dtype=np.float32)


def reduced(image: Image.Image) -> Image.Image:
    """The RGB image the checks look at: longest side at most ``colorimetry.WORK_SIDE`` (area-averaged; an RGB
    image already that small is returned itself, not copied). Checking a reduced image gives the same warnings as
    checking the original, so callers may keep only this small copy."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    factor = colorimetry.WORK_SIDE / max(image.size)
    if factor < 1.0:
        image = image.resize((max(1, round(image.width * factor)), max(1, round(image.height * factor))),
                             Image.Resampling.BOX)
    return image


def colour_statistics(rgb: np.ndarray, lab: np.ndarray) -> tuple[float, ...]:
    """Float32 RGB ``[H, W, 3]`` in [0, 1] and its CIELAB -> the first six of :data:`APPEARANCE`: the log of each
    channel's illuminant estimate (``colorimetry.illuminant``, floored at 1/255, as black) and the standard
    deviations of L*, a*, b*."""
    illuminant = colorimetry.illuminant(rgb)
    _, spread = cv2.meanStdDev(lab)
    return (*(float(v) for v in np.log(np.maximum(illuminant, 1.0 / 255.0))), *(float(v) for v in spread.ravel()))


def _lesion(small: np.ndarray, lab: np.ndarray, hw: tuple[int, int]) -> tuple[float | None, bool, float]:
    """The ``LESION_SIDE`` working copy and its CIELAB -> lesion area fraction at the checked image's size ``hw``
    (None when ``colorimetry`` finds none), whether it reaches the border, and its relative contrast (0 if none)."""
    try:
        lesion, contrast = colorimetry.find_lesion(small, lab, LESION_SIDE / colorimetry.WORK_SIDE)
    except colorimetry.SegmentationError:
        return None, False, 0.0
    lesion = colorimetry.resize_mask(lesion, hw)
    area = float(lesion.mean())
    edge = np.concatenate([lesion[0], lesion[-1], lesion[:, 0], lesion[:, -1]])
    return area, bool(edge.any()), float(contrast)
