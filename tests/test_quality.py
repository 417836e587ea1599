"""model.quality: each warning fires on the image made to have that defect and not on a good one."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter
from scipy.ndimage import uniform_filter1d

from model import quality


def lesion_photo(size: int = 256, radius: float = 0.18, centre: tuple[float, float] = (0.5, 0.5),
                 skin: tuple[int, int, int] = (205, 160, 135), seed: int = 0) -> Image.Image:
    """Skin with fine texture and a dark brown disc with a pigment pattern (a sharp lesion-like image)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.array(skin, dtype=float) * (1 + rng.normal(0, 0.03, (size, size, 1)))
    inside = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 < radius ** 2
    pattern = 0.75 + 0.25 * (np.sin(xx * 90) * np.sin(yy * 90) > 0)
    img[inside] = np.array([95, 60, 45]) * pattern[inside, None]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def reference_blur(grey: np.ndarray, taps: int = quality.BLUR_TAPS) -> float:
    """Crete-Roffet et al. (2007), written from the paper with scipy: independent of model.quality's cv2 code."""
    values = []
    for axis in (0, 1):
        reblurred = uniform_filter1d(grey, taps, axis=axis, mode="reflect")
        d_f = np.abs(np.diff(grey, axis=axis))
        d_b = np.abs(np.diff(reblurred, axis=axis))
        s_f, s_v = d_f.sum(), np.maximum(0, d_f - d_b).sum()
        values.append((s_f - s_v) / s_f)
    return max(values)


def test_blur_measure_matches_the_published_formula():
    rng = np.random.default_rng(0)
    grey = uniform_filter1d(rng.random((64, 80)).astype(np.float32), 3, axis=0)
    assert quality.blur_measure(grey) == pytest.approx(reference_blur(grey), abs=1e-4)


def test_a_sharp_well_exposed_lesion_gets_no_warning():
    assert quality.check(lesion_photo(), "dermoscopy").warnings == ()


def test_a_blurred_lesion_is_blurred():
    blurred = lesion_photo().filter(ImageFilter.GaussianBlur(4))
    report = quality.check(blurred, "dermoscopy")
    assert "blurred" in report.warnings and report.blur > quality.check(lesion_photo(), "dermoscopy").blur


@pytest.mark.parametrize("factor, warning", [(0.15, "underexposed"), (3.0, "overexposed")])
def test_exposure_warnings(factor, warning):
    pixels = np.clip(np.asarray(lesion_photo(), dtype=float) * factor, 0, 255).astype(np.uint8)
    assert warning in quality.check(Image.fromarray(pixels), "dermoscopy").warnings


def test_bare_skin_is_lesion_not_found():
    assert "lesion_not_found" in quality.check(lesion_photo(radius=0.0), "clinical").warnings


def test_a_lesion_cut_by_the_frame_touches_the_border():
    assert "lesion_touches_border" in quality.check(lesion_photo(centre=(0.05, 0.5), radius=0.2),
                                                    "dermoscopy").warnings


def test_a_tiny_lesion_is_too_small_for_dermoscopy_but_not_for_a_clinical_photo():
    tiny = lesion_photo(radius=0.045)  # area ~0.6 % of the frame
    assert "lesion_too_small" in quality.check(tiny, "dermoscopy").warnings
    assert "lesion_too_small" not in quality.check(tiny, "clinical").warnings


def test_warnings_name_their_modality():
    found = quality.warnings_for({"clinical": lesion_photo(), "dermoscopy": lesion_photo(radius=0.0)})
    assert {"modality": "dermoscopy", "warning": "lesion_not_found"} in found
    assert all(w["modality"] == "dermoscopy" for w in found)
