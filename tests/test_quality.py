"""model.quality: each warning fires on the image made to have that defect and not on a good one."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageFilter
from scipy.ndimage import uniform_filter1d

from model import colorimetry, quality


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


def _scaled(image: Image.Image, factor: float) -> Image.Image:
    return Image.fromarray(np.clip(np.asarray(image, dtype=float) * factor, 0, 255).astype(np.uint8))


RENDERED_DEFECTS = {
    "sharp": lambda: lesion_photo(),
    "blurred": lambda: lesion_photo().filter(ImageFilter.GaussianBlur(4)),
    "slightly blurred": lambda: lesion_photo(seed=1).filter(ImageFilter.GaussianBlur(1)),
    "dark": lambda: _scaled(lesion_photo(), 0.15),
    "bright": lambda: _scaled(lesion_photo(), 3.0),
    "brightened x1.6": lambda: _scaled(lesion_photo(seed=2), 1.6),
    "bare skin": lambda: lesion_photo(radius=0.0),
    "cut by the frame": lambda: lesion_photo(centre=(0.05, 0.5), radius=0.2),
    "tiny": lambda: lesion_photo(radius=0.045),
    "large": lambda: lesion_photo(radius=0.42, seed=3),
    "phone size": lambda: lesion_photo(size=1024, seed=5),
}
WARNINGS_BEFORE_THE_FAST_PATHS = {  # (clinical, dermoscopy), from model.quality as of commit 90c8989
    "sharp": ((), ()),
    "blurred": (("blurred",), ("blurred",)),
    "slightly blurred": (("blurred",), ()),
    "dark": (("underexposed",), ("underexposed",)),
    "bright": (("overexposed",), ("overexposed",)),
    "brightened x1.6": (("overexposed",), ("overexposed",)),
    "bare skin": (("lesion_not_found",), ("lesion_not_found",)),
    "cut by the frame": (("lesion_touches_border",), ("lesion_touches_border",)),
    "tiny": ((), ("lesion_too_small",)),
    "large": ((), ()),
    "phone size": ((), ()),
}


@pytest.mark.parametrize("defect", sorted(RENDERED_DEFECTS))
def test_rendered_defects_get_the_warnings_they_got_before_the_fast_paths(defect):
    image = RENDERED_DEFECTS[defect]()
    found = tuple(quality.check(image, m).warnings for m in ("clinical", "dermoscopy"))
    assert found == WARNINGS_BEFORE_THE_FAST_PATHS[defect]


@pytest.mark.parametrize("defect", sorted(RENDERED_DEFECTS))
def test_the_lesion_behind_the_warnings_is_the_one_colorimetry_measures_at_full_working_size(defect):
    """The checks segment a LESION_SIDE copy; colorimetry's weak labels measure the WORK_SIDE copy. Same lesion:
    found by both or by neither, the same area within a few percent, touching the border alike."""
    image = RENDERED_DEFECTS[defect]()
    report = quality.check(image, "dermoscopy")
    try:
        mask = colorimetry.measure(quality.working_copy(image)).mask
    except colorimetry.SegmentationError:
        assert report.lesion_area is None and "lesion_not_found" in report.warnings
        return
    assert report.lesion_area == pytest.approx(float(mask.mean()), rel=0.05)
    assert report.touches_border == bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


@pytest.mark.parametrize("radius", [0.03, 0.045, 0.1, 0.3])
def test_the_lesion_area_is_the_drawn_discs_area(radius):
    """Against the disc's own area (pi r^2 of the frame), down to a lesion 3 % of the frame wide: the one that
    the segmentation's filters, left at their WORK_SIDE pixel sizes on the smaller copy, lost."""
    report = quality.check(lesion_photo(radius=radius, seed=7), "clinical")
    assert report.lesion_area == pytest.approx(math.pi * radius ** 2, rel=0.1)
    assert "lesion_not_found" not in report.warnings and not report.touches_border


def test_the_check_reads_the_same_pixels_as_a_plain_float_conversion():
    image = lesion_photo(size=300, seed=4)
    expected = np.asarray(quality.reduced(image), dtype=np.float32) / 255.0
    np.testing.assert_array_equal(quality.working_copy(image), expected)



@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (3, 5), (191, 255), (192, 256)])
def test_exposure_is_the_median_and_clipped_shares_of_the_8_bit_luma(shape):
    """Grey pixels (R = G = B) have that value as luma; values on both sides of each limit, and ties."""
    values = np.array([0, 9, 10, 11, 37, 128, 200, 244, 245, 246, 255])
    luma = np.random.default_rng(shape[0]).choice(values, size=shape)
    median, dark, bright = quality.exposure(np.repeat(luma[..., None], 3, axis=2).astype(np.uint8))
    assert median == pytest.approx(np.median(luma) / 255, abs=1e-12)
    assert dark == np.mean(luma <= quality.DARK_LUMA)
    assert bright == np.mean(luma >= quality.BRIGHT_LUMA)


# ------------------------------------------------------------------------ the view statistics of the OOD score


def textbook_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] -> CIE 1976 L*a*b* (D65), from the sRGB and CIELAB definitions: independent of cv2."""
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    t = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def two_tone(skin: tuple[int, int, int], lesion: tuple[int, int, int], side: int = 64) -> tuple[Image.Image, float]:
    """A 256 x 256 skin image with a ``side``-px lesion square on the 2-px grid (so the checks' 128-px copy keeps
    exactly two tones) and the lesion's area fraction."""
    pixels = np.empty((256, 256, 3), dtype=np.uint8)
    pixels[:] = skin
    start = (256 - side) // 2
    pixels[start:start + side, start:start + side] = lesion
    return Image.fromarray(pixels), side * side / 256 ** 2


@pytest.mark.parametrize("skin, lesion", [((205, 160, 135), (95, 60, 45)), ((150, 100, 75), (60, 35, 25))])
def test_view_statistics_are_the_illuminant_lab_spreads_and_lesion_contrast_of_the_image(skin, lesion):
    image, f = two_tone(skin, lesion)
    s, les = np.array(skin) / 255.0, np.array(lesion) / 255.0
    p = colorimetry.SHADES_OF_GRAY_P
    illuminant = np.log((f * les ** p + (1 - f) * s ** p) ** (1 / p))  # each channel's p-norm mean
    lab_s, lab_l = textbook_lab(s), textbook_lab(les)
    spreads = np.abs(lab_s - lab_l) * math.sqrt(f * (1 - f))  # the std of a two-valued variable
    contrast = (lab_s[0] - lab_l[0]) / lab_s[0]
    stats = dict(zip(quality.APPEARANCE, quality.check(image, "clinical").appearance, strict=True))
    np.testing.assert_allclose([stats[f"log_illuminant_{c}"] for c in "rgb"], illuminant, atol=1e-4)
    np.testing.assert_allclose([stats[f"spread_{c}"] for c in "Lab"], spreads, rtol=0.02, atol=0.05)
    assert stats["lesion_contrast"] == pytest.approx(contrast, abs=0.005)


def test_bare_skin_has_no_lesion_contrast_and_a_flat_field_no_spread():
    bare = quality.check(lesion_photo(radius=0.0), "clinical")
    assert "lesion_not_found" in bare.warnings and bare.appearance[quality.APPEARANCE.index("lesion_contrast")] == 0
    flat = quality.check(Image.new("RGB", (300, 200), (30, 90, 200)), "clinical")
    spreads = [flat.appearance[quality.APPEARANCE.index(f"spread_{c}")] for c in "Lab"]
    np.testing.assert_allclose(spreads, 0.0, atol=1e-3)
    np.testing.assert_allclose(flat.appearance[:3], np.log(np.array([30, 90, 200]) / 255), atol=1e-4)
