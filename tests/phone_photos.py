"""Phone-size (12 MP) photos in every format a phone writes, each by its real encoder, stored rotated with an EXIF
orientation other than 1, and what the test knows about them independently of ``model.preprocessing``.

The upright picture is landscape with a red block in its top-left corner and a green block in its top-right
corner: a decoder that ignores the orientation, applies it twice or mirrors instead of rotating puts them
elsewhere. ``reference_png`` is the same pixels as a PNG: the file decoded by its library without our code, turned
upright by this module's own table, so a correct decoder gives bit-identical model input.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache

import numpy as np
import pillow_heif
from PIL import Image

pillow_heif.register_heif_opener()  # the HEIC encoder (and pillow-heif's own decoder for the reference)

HEIGHT, WIDTH = 3024, 4032  # 12.2 MP, an iPhone's 4:3 photo
MARK = 256  # side of the corner marks, in pixels of the upright photo
RED, GREEN = (230, 20, 20), (20, 200, 40)

# EXIF orientation -> numpy rotation (np.rot90's k, counter-clockwise quarter turns) that turns the stored pixels
# upright. 6: the camera was turned 90 degrees clockwise, the viewer turns the stored picture clockwise (k=-1).
TO_UPRIGHT_K = {3: 2, 6: -1, 8: 1}


@dataclass(frozen=True)
class PhonePhoto:
    fmt: str  # Pillow's name of the format written
    orientation: int  # EXIF orientation written into the file
    data: bytes


def upright_pixels() -> np.ndarray:
    """``[HEIGHT, WIDTH, 3]`` uint8: smooth skin-like gradient, a darker lesion, the two corner marks."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    rgb = np.stack([x / WIDTH * 60 + 170, y / HEIGHT * 50 + 120, (x + y) / (WIDTH + HEIGHT) * 40 + 100], axis=-1)
    lesion = (x - WIDTH * 0.55) ** 2 / 700**2 + (y - HEIGHT * 0.6) ** 2 / 450**2 < 1
    rgb[lesion] *= 0.45
    rgb[:MARK, :MARK] = RED
    rgb[:MARK, -MARK:] = GREEN
    return rgb.clip(0, 255).astype(np.uint8)


# format -> (orientation written, encoder options). Fast encoder settings: the content, not the speed, matters here.
FORMATS: dict[str, tuple[int, dict]] = {
    "MPO": (8, {"quality": 92}),
    "WEBP": (3, {"quality": 85, "method": 0}),
    "HEIF": (6, {"quality": 80, "enc_params": {"preset": "ultrafast"}}),
    "AVIF": (6, {"quality": 80, "speed": 10}),
}


@cache
def phone_photo(fmt: str) -> PhonePhoto:
    """The upright photo stored rotated (as the camera saw it) with an EXIF orientation, by ``fmt``'s encoder."""
    orientation, options = FORMATS[fmt]
    stored = np.ascontiguousarray(np.rot90(upright_pixels(), -TO_UPRIGHT_K[orientation]))
    exif = Image.Exif()
    exif[0x0112] = orientation
    img = Image.fromarray(stored)
    if fmt == "MPO":  # a phone's MPO: the primary picture, then a smaller second one (a preview or gain map)
        options = {**options, "save_all": True, "append_images": [img.resize((stored.shape[1] // 4,
                                                                              stored.shape[0] // 4))]}
    buf = io.BytesIO()
    img.save(buf, format=fmt, exif=exif.tobytes(), **options)
    return PhonePhoto(fmt, orientation, buf.getvalue())


def decoded_upright(photo: PhonePhoto, draft_size: int | None) -> np.ndarray:
    """The file's pixels decoded by its library alone and turned upright by :data:`TO_UPRIGHT_K`.

    libheif applies a HEIC's rotation itself (it lives in the container, not in EXIF), so its pixels come upright;
    the marks, not this function, prove that. A JPEG/MPO is decoded at the DCT scale the model's data config asks
    for (``draft_size``), as the product does.
    """
    if photo.fmt == "HEIF":
        return np.asarray(pillow_heif.open_heif(io.BytesIO(photo.data)).to_pillow().convert("RGB"))
    img = Image.open(io.BytesIO(photo.data))
    if photo.fmt == "MPO" and draft_size:
        img.draft("RGB", (draft_size, draft_size))
    return np.ascontiguousarray(np.rot90(np.asarray(img.convert("RGB")), TO_UPRIGHT_K[photo.orientation]))


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def marks_are_upright(pixels: np.ndarray) -> bool:
    """Landscape, red block top-left, green block top-right (checked at the blocks' centres, any scale)."""
    height, width, _ = pixels.shape
    cy, cx = round(MARK / 2 * height / HEIGHT), round(MARK / 2 * width / WIDTH)

    def near(pixel: np.ndarray, colour: tuple[int, int, int]) -> bool:
        return bool(np.abs(pixel.astype(int) - colour).max() <= 40)

    return width > height and near(pixels[cy, cx], RED) and near(pixels[cy, width - 1 - cx], GREEN)
