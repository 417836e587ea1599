"""Preprocessing against references computed here from first principles, on images whose pixels are known.

The parity tests (tests/test_preprocessing.py) prove that training, evaluation and serving compute the same tensor;
they cannot see a bug all three share. These tests never call the product to get an expected value: the ImageNet
constants, the HSV and CIELAB formulas, the EXIF orientation table, the 16-bit and CMYK conversions are written out
below in numpy and compared with what ``preprocess_bytes`` (the serving path) returns.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from model.config import DataConfig
from model.preprocessing import decode_image, preprocess_bytes

SIZE = 64
CFG = DataConfig(image_size=SIZE)
# torchvision's ImageNet statistics, in RGB order.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])
# The pseudo-multispectral view's documented normalisation: each of H, S, L*/100 as (x - 0.5) / 0.25.
MS_MEAN, MS_STD = 0.5, 0.25


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def solid(rgb: tuple[int, int, int], size: tuple[int, int] = (SIZE, SIZE)) -> bytes:
    return encode(Image.new("RGB", size, rgb))


def normalised(rgb) -> np.ndarray:
    """8-bit RGB -> the model's input values, per channel."""
    return (np.asarray(rgb, np.float64) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def pixel(tensor, y: int = SIZE // 2, x: int = SIZE // 2) -> np.ndarray:
    """``[3, S, S]`` tensor -> its 3 channel values at (y, x)."""
    return tensor[:, y, x].double().numpy()


# ------------------------------------------------------------------------------------------ colour and layout


@pytest.mark.parametrize("rgb", [(200, 100, 50), (0, 0, 0), (255, 255, 255), (12, 180, 240)])
@pytest.mark.parametrize("modality", ["clinical", "dermoscopy"])
def test_a_known_colour_becomes_its_imagenet_normalised_value(rgb, modality):
    tensor = preprocess_bytes(solid(rgb, (90, 70)), modality, CFG)  # resized too: a solid colour stays itself
    assert tuple(tensor.shape) == (3, SIZE, SIZE)
    np.testing.assert_allclose(tensor.double().numpy(), np.broadcast_to(normalised(rgb)[:, None, None],
                                                                        tensor.shape), atol=1e-5)


def test_channels_rows_and_columns_keep_their_place():
    pixels = np.zeros((SIZE, SIZE, 3), np.uint8)
    pixels[: SIZE // 2, : SIZE // 2] = (255, 0, 0)  # top-left red
    pixels[: SIZE // 2, SIZE // 2:] = (0, 255, 0)  # top-right green
    pixels[SIZE // 2:, :] = (0, 0, 255)  # bottom blue
    tensor = preprocess_bytes(encode(Image.fromarray(pixels)), "clinical", CFG)  # 64 px: no resize
    expected = np.stack([normalised(px) for px in pixels.reshape(-1, 3)]).reshape(SIZE, SIZE, 3).transpose(2, 0, 1)
    np.testing.assert_allclose(tensor.double().numpy(), expected, atol=1e-5)


# ------------------------------------------------------------------------------------------ H, S, L* view


def hsv_hue_saturation(rgb) -> tuple[float, float]:
    """Textbook HSV: hue in turns [0, 1) (0 for grays), saturation = (max - min) / max (0 for black)."""
    r, g, b = np.asarray(rgb, np.float64) / 255.0
    high, low = max(r, g, b), min(r, g, b)
    chroma = high - low
    if chroma == 0:
        hue = 0.0
    elif high == r:
        hue = ((g - b) / chroma) % 6
    elif high == g:
        hue = (b - r) / chroma + 2
    else:
        hue = (r - g) / chroma + 4
    return hue / 6.0, (chroma / high if high > 0 else 0.0)


def cielab_lightness(rgb) -> float:
    """CIELAB L* of an sRGB colour (D65): undo the sRGB gamma, Y from the sRGB primaries, then the L* curve."""
    c = np.asarray(rgb, np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    y = linear @ np.array([0.2126, 0.7152, 0.0722])
    delta = 6 / 29
    f = np.cbrt(y) if y > delta**3 else y / (3 * delta**2) + 4 / 29
    return 116 * f - 16


@pytest.mark.parametrize("rgb, lightness", [
    ((255, 0, 0), 53.24), ((0, 255, 0), 87.73), ((0, 0, 255), 32.30), ((128, 128, 128), 53.59),
    ((255, 255, 255), 100.0), ((200, 100, 50), None), ((60, 40, 30), None), ((12, 180, 240), None),
])
def test_the_multispectral_view_is_hsv_hue_saturation_and_cielab_lightness(rgb, lightness):
    hue, saturation = hsv_hue_saturation(rgb)
    l_star = cielab_lightness(rgb)
    if lightness is not None:  # the formula above agrees with published values for the primaries and gray
        assert l_star == pytest.approx(lightness, abs=0.01)
    got = pixel(preprocess_bytes(solid(rgb), "multispectral", CFG))
    expected = (np.array([hue, saturation, l_star / 100.0]) - MS_MEAN) / MS_STD
    tolerance = np.array([1e-4, 1e-4, 0.2 / 100]) / MS_STD  # a 1e-4 turn of hue, 1e-4 saturation, 0.2 L* units
    assert np.all(np.abs(got - expected) <= tolerance), (got, expected)


# ------------------------------------------------------------------------------------------ EXIF orientation

RED, GREEN, GRAY = (220, 30, 30), (30, 200, 30), (128, 128, 128)


def upright() -> np.ndarray:
    """A 96 x 64 (W x H) photo as it should be seen: red top-left corner, green top-right, gray elsewhere."""
    pixels = np.full((64, 96, 3), GRAY, np.uint8)
    pixels[:24, :32] = RED
    pixels[:24, -32:] = GREEN
    return pixels


# How to store ``upright`` so that a viewer applying EXIF orientation n shows it upright: the inverse of n's
# display transform (TIFF/EXIF 2.3: 2 mirror left-right, 3 rotate 180, 4 mirror top-bottom, 5 transpose,
# 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise). np.rot90(k=1) is counter-clockwise.
STORED_AS = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, 1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, -1),
}


def exif_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = np.ascontiguousarray(STORED_AS[orientation](upright()))
    return encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())


def nearest_colour(values: np.ndarray) -> str:
    names = {"red": RED, "green": GREEN, "gray": GRAY}
    return min(names, key=lambda n: np.abs(values - normalised(names[n])).sum())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_shown_upright(orientation):
    data = exif_jpeg(orientation)
    assert decode_image(data).size == (96, 64)
    tensor = preprocess_bytes(data, "clinical", CFG)
    corners = {"top-left": (4, 4), "top-right": (4, SIZE - 5), "bottom-left": (SIZE - 5, 4),
               "bottom-right": (SIZE - 5, SIZE - 5)}
    seen = {name: nearest_colour(pixel(tensor, y, x)) for name, (y, x) in corners.items()}
    assert seen == {"top-left": "red", "top-right": "green", "bottom-left": "gray", "bottom-right": "gray"}


# ------------------------------------------------------------------------------------------ 16-bit, CMYK, palette


def test_sixteen_bit_grayscale_is_scaled_from_its_full_range():
    levels = np.array([0, 1000, 13107, 32896, 50000, 65535], np.uint16)  # 13107 = 51 * 257, 32896 = 128 * 257
    pixels = np.repeat(levels, SIZE // len(levels) + 1)[:SIZE][None, :].repeat(SIZE, 0)
    img = Image.fromarray(pixels)
    assert img.mode.startswith("I;16")
    tensor = preprocess_bytes(encode(img), "clinical", CFG)
    eight_bit = np.round(pixels[0].astype(np.float64) * 255 / 65535)  # 1000 -> 4, not 1000 >> 8 = 3
    expected = normalised(np.repeat(eight_bit[:, None], 3, 1))  # [S, 3] gray: R = G = B
    np.testing.assert_allclose(pixel(tensor, 10, slice(None)).T, expected, atol=1e-5)


def test_a_dark_sixteen_bit_image_stays_dark():
    # Values <= 255 in a 16-bit file are nearly black, not a full-range 8-bit image.
    pixels = np.tile(np.array([0, 100, 200, 255], np.uint16), (SIZE, SIZE // 4))
    tensor = preprocess_bytes(encode(Image.fromarray(pixels)), "clinical", CFG)
    expected = normalised(np.repeat(np.round(pixels[0] * 255 / 65535)[:, None], 3, 1))
    np.testing.assert_allclose(pixel(tensor, 10, slice(None)).T, expected, atol=1e-5)


def test_sixteen_bit_rgb_is_scaled_to_eight_bits():
    import cv2

    rgb16 = np.array([65535, 30000, 1000], np.uint16)
    ok, png = cv2.imencode(".png", np.full((SIZE, SIZE, 3), rgb16[::-1], np.uint16))  # OpenCV writes BGR
    assert ok
    got = pixel(preprocess_bytes(png.tobytes(), "clinical", CFG))
    # Pillow keeps a 16-bit RGB sample's high byte (v >> 8): within one 8-bit level of v * 255 / 65535.
    np.testing.assert_allclose(got, normalised(rgb16.astype(np.float64) * 255 / 65535),
                               atol=1.01 / 255 / IMAGENET_STD.min())


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG"])
def test_cmyk_becomes_the_textbook_rgb(fmt):
    cmyk = np.array([0, 128, 255, 51])  # 0..255 ink
    img = Image.new("CMYK", (SIZE, SIZE), tuple(int(v) for v in cmyk))
    c, m, y, k = cmyk / 255.0
    rgb = 255 * np.array([(1 - c) * (1 - k), (1 - m) * (1 - k), (1 - y) * (1 - k)])  # (204, 101.6, 0)
    got = pixel(preprocess_bytes(encode(img, fmt, **({"quality": 100} if fmt == "JPEG" else {})), "clinical", CFG))
    levels = 1.01 if fmt == "TIFF" else 3.0  # rounding; JPEG also quantises
    np.testing.assert_allclose(got, normalised(rgb), atol=levels / 255 / IMAGENET_STD.min())


@pytest.mark.parametrize("transparent", [False, True])
def test_palette_images_show_their_palette_colours(transparent):
    colours = [(10, 200, 30), (250, 5, 120), (90, 90, 255)]
    index = np.zeros((SIZE, SIZE), np.uint8)
    index[:, SIZE // 3:] = 1
    index[:, 2 * SIZE // 3:] = 2
    img = Image.frombytes("P", (SIZE, SIZE), index.tobytes())
    img.putpalette([v for colour in colours for v in colour])
    if transparent:
        img.info["transparency"] = 1  # the colour under a transparent index is what the photo had
    tensor = preprocess_bytes(encode(img), "clinical", CFG)
    for column, colour in ((5, colours[0]), (SIZE // 2, colours[1]), (SIZE - 5, colours[2])):
        np.testing.assert_allclose(pixel(tensor, 20, column), normalised(colour), atol=1e-5)


# ------------------------------------------------------------------------------------------ colour constancy

# DataConfig.color_constancy's documented target: the illuminant estimate of every view becomes this mid skin colour.
CONSTANCY_REFERENCE = np.array([0.70, 0.56, 0.48])


def two_tone(left, right) -> np.ndarray:
    """A ``SIZE`` x ``SIZE`` 8-bit image: the left quarter one colour (a lesion), the rest another (skin)."""
    pixels = np.empty((SIZE, SIZE, 3), np.uint8)
    pixels[:, : SIZE // 4] = left
    pixels[:, SIZE // 4:] = right
    return pixels


@pytest.mark.parametrize("p", [1.0, 6.0])
def test_shades_of_grey_maps_the_minkowski_mean_of_each_channel_to_the_reference(p):
    lesion, skin = np.array([90, 60, 40]), np.array([200, 150, 120])
    # The p-norm mean of each channel over a quarter of lesion and three quarters of skin pixels.
    illuminant = (0.25 * (lesion / 255.0) ** p + 0.75 * (skin / 255.0) ** p) ** (1 / p)
    cfg = DataConfig(image_size=SIZE, color_constancy=p)
    tensor = preprocess_bytes(encode(Image.fromarray(two_tone(lesion, skin))), "dermoscopy", cfg)
    for column, colour in ((2, lesion), (SIZE - 3, skin)):
        expected = np.clip(colour / 255.0 * CONSTANCY_REFERENCE / illuminant, 0, 1)
        np.testing.assert_allclose(pixel(tensor, 10, column), (expected - IMAGENET_MEAN) / IMAGENET_STD, atol=1e-4)


@pytest.mark.parametrize("modality", ["clinical", "dermoscopy", "multispectral"])
def test_with_colour_constancy_a_capture_gain_and_colour_cast_cancel(modality):
    rng = np.random.default_rng(3)
    skin = np.array([190.0, 140.0, 115.0]) * rng.uniform(0.9, 1.1, (SIZE, SIZE, 1))  # textured skin
    skin[20:40, 15:45] *= 0.55  # a darker lesion
    relit = skin * np.array([0.7, 0.62, 0.55])  # dimmer and warmer: a different camera or lamp
    on, off = DataConfig(image_size=SIZE, color_constancy=6), CFG
    tensors = {cfg: [preprocess_bytes(encode(Image.fromarray(np.round(x).astype(np.uint8))), modality, cfg)
                     for x in (skin, relit)] for cfg in (on, off)}
    # Equal up to 8-bit rounding of the dimmer image (about 2 levels after the gain is divided out).
    assert float((tensors[on][0] - tensors[on][1]).abs().mean()) < 0.03
    assert float((tensors[off][0] - tensors[off][1]).abs().mean()) > 0.3


@pytest.mark.parametrize("p", [0.5, -1, 17])
def test_an_invalid_colour_constancy_norm_is_refused_naming_the_key(p):
    with pytest.raises(ValueError, match=r"data\.color_constancy.*\[1, 16\].*0 for off"):
        DataConfig(color_constancy=p)


def test_colour_constancy_applies_only_to_the_views_it_names():
    pixels = two_tone(np.array([90, 60, 40]), np.array([200, 150, 120]))
    data = encode(Image.fromarray(pixels))
    both = DataConfig(image_size=SIZE, color_constancy=6)
    close = DataConfig(image_size=SIZE, color_constancy=6, color_constancy_views=("dermoscopy", "multispectral"))
    np.testing.assert_array_equal(preprocess_bytes(data, "clinical", close).numpy(),
                                  preprocess_bytes(data, "clinical", CFG).numpy())  # untouched
    for modality in ("dermoscopy", "multispectral"):
        np.testing.assert_array_equal(preprocess_bytes(data, modality, close).numpy(),
                                      preprocess_bytes(data, modality, both).numpy())
    assert not np.array_equal(preprocess_bytes(data, "clinical", both).numpy(),
                              preprocess_bytes(data, "clinical", CFG).numpy())


def test_an_unknown_colour_constancy_view_is_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"data\.color_constancy_views: unknown modality 'derm'"):
        DataConfig(color_constancy=6, color_constancy_views=("derm",))
