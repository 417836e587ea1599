"""The bad-input corpus: every kind of upload a clinic's server meets, with the answer pigment documents for it.

Each :class:`Case` is one HTTP request (multipart parts or a raw JSON body) and the expected outcome: a status
and the field the error must name, or 200 for inputs that must work (grayscale, CMYK, 16-bit, palette, ...).
The same corpus runs through the predictor alone (fast, no Java) and through a real TorchServe.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import pillow_heif
from PIL import Image

from tests.images import image_bytes

pillow_heif.register_heif_opener()  # the HEIF encoder, for the corpus's HEIC files


@dataclass(frozen=True)
class Case:
    name: str
    status: int  # expected HTTP status
    field: str = ""  # the field the error must name ("" for 200)
    parts: tuple[tuple[str, bytes], ...] = ()  # multipart (field name, bytes), in order; may repeat a name
    json_body: bytes | None = None  # raw JSON body instead of multipart

    def predictor_request(self) -> dict:
        """The dict a TorchServe handler would receive for this request."""
        if self.json_body is not None:
            return {"body": bytearray(self.json_body)}
        return {name: bytearray(data) for name, data in self.parts}


def _pixels(h: int = 64, w: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` (a decompression bomb's calling card)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real small JPEG with its SOF0 frame size rewritten to ``width`` x ``height``."""
    data = bytearray(encode(Image.fromarray(_pixels()), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def photo(h: int = 64, w: int = 80) -> np.ndarray:
    """A smooth, lopsided "lesion photo" ``[h, w, 3]`` uint8: unlike noise, its rotation or mirror image, a shifted
    colour or a lost channel changes the tiny test model's score by ~1e-3 or more, so equivalence checks can fail."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([120 + 100 * np.sin(x / w * 3), 80 + 60 * (y / h), 60 + 40 * np.cos((x + y) / 20)], -1)
    img[(y - h * 0.3) ** 2 + (x - w * 0.3) ** 2 < (min(h, w) * 0.2) ** 2] = (60, 30, 20)  # an off-centre blob
    return np.clip(img, 0, 255).astype(np.uint8)


def png(pixels: np.ndarray) -> bytes:
    return encode(Image.fromarray(np.ascontiguousarray(pixels)), "PNG")


def exif_rotated_jpeg() -> bytes:
    """``photo()`` stored rotated 90 degrees counter-clockwise, with EXIF Orientation 6 (rotate 90 clockwise to
    display): a phone held sideways."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.fromarray(np.ascontiguousarray(np.rot90(photo(), 1))), "JPEG", quality=95,
                  exif=exif.tobytes())


def stored_pixels(data: bytes, mode: str | None = None) -> np.ndarray:
    """The pixels as the file stores them (Pillow decodes; no EXIF orientation, no colour conversion)."""
    img = Image.open(io.BytesIO(data))
    return np.asarray(img if mode is None else img.convert(mode))


def cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    """Textbook CMYK (0..255 ink) -> RGB: each channel is (1 - ink) * (1 - black)."""
    ink = cmyk.astype(np.float64) / 255.0
    rgb = 255.0 * (1 - ink[..., :3]) * (1 - ink[..., 3:])
    return np.round(rgb).astype(np.uint8)


def rgb_to_cmyk_image(rgb: np.ndarray) -> Image.Image:
    """RGB -> CMYK with the shared darkness as black ink (K = 1 - max), as print software separates a photo.
    (Pillow's own RGB -> CMYK leaves K at 0, which would let a conversion that ignores K pass.)"""
    x = rgb.astype(np.float64) / 255.0
    k = 1 - x.max(axis=-1, keepdims=True)
    cmy = (1 - x - k) / np.maximum(1 - k, 1e-9)
    cmyk = np.round(np.concatenate([cmy, k], axis=-1) * 255).astype(np.uint8)
    return Image.frombytes("CMYK", (rgb.shape[1], rgb.shape[0]), cmyk.tobytes())


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def palette_to_rgb(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    table = np.asarray(img.getpalette(), np.uint8).reshape(-1, 3)
    return table[np.asarray(img)]  # the colour under a transparent index is kept (alpha is dropped)


def multipage_tiff() -> bytes:
    pages = [Image.fromarray(_pixels(seed=s)) for s in range(3)]
    buf = io.BytesIO()
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:])
    return buf.getvalue()


def animated_gif() -> bytes:
    frames = [Image.fromarray(_pixels(seed=s)).convert("P") for s in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def animated(fmt: str) -> bytes:
    """Three frames written by the format's own encoder (an animated WebP or AVIF, or a HEIF image collection)."""
    frames = [Image.fromarray(_pixels(seed=s)) for s in range(3)]
    timing = {"duration": 100} if fmt != "HEIF" else {}
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], **timing)


def mpo_bytes() -> bytes:
    """A phone-style MPO: the primary JPEG and a second picture after it (Pillow's MPO writer)."""
    img = Image.fromarray(_pixels(seed=8))
    return encode(img, "MPO", save_all=True, append_images=[img.resize((40, 32))])


def zip_bytes() -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("lesion.jpg", b"not really")
    return buf.getvalue()


GOOD = image_bytes(1)
GOOD_JPEG = encode(Image.fromarray(_pixels(seed=7)), "JPEG", quality=90)
PNG = encode(Image.fromarray(_pixels(seed=3)), "PNG")
JPEG = encode(Image.fromarray(_pixels(seed=4)), "JPEG")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _clin(data: bytes) -> tuple[tuple[str, bytes], ...]:
    return (("clinical_image", data),)


PHOTO = photo()
GRAY16 = (np.linspace(0, 65535, 64 * 80).reshape(64, 80) * 0.5 + PHOTO[..., 0] * 128).astype(np.uint16)
MUST_WORK: dict[str, bytes] = {
    "grayscale png": encode(Image.fromarray(PHOTO).convert("L"), "PNG"),
    "grayscale jpeg": encode(Image.fromarray(PHOTO).convert("L"), "JPEG"),
    "rgba png": encode(Image.fromarray(PHOTO).convert("RGBA"), "PNG"),
    "la png": encode(Image.fromarray(PHOTO).convert("LA"), "PNG"),
    "cmyk jpeg": encode(rgb_to_cmyk_image(PHOTO), "JPEG", quality=95),
    "16-bit png": encode(Image.fromarray(GRAY16), "PNG"),
    "palette png": encode(Image.fromarray(PHOTO).convert("P"), "PNG"),
    "palette png with transparency": encode(Image.fromarray(PHOTO).convert("P"), "PNG", transparency=0),
    "bmp": encode(Image.fromarray(PHOTO), "BMP"),
    "single-page tiff": encode(Image.fromarray(PHOTO), "TIFF"),
    "exif-rotated jpeg": exif_rotated_jpeg(),
}


def equivalents() -> dict[str, tuple[bytes, float]]:
    """Must-work case -> (a plain 8-bit RGB PNG of what it shows, built here without pigment's code; the largest
    score difference allowed). Served scores have 4 decimals; CMYK may differ by one 8-bit level of rounding."""
    m = MUST_WORK
    return {
        "grayscale png": (png(gray_to_rgb(stored_pixels(m["grayscale png"]))), 1e-4),
        "grayscale jpeg": (png(gray_to_rgb(stored_pixels(m["grayscale jpeg"]))), 1e-4),
        "rgba png": (png(PHOTO), 1e-4),
        "la png": (png(gray_to_rgb(stored_pixels(m["la png"])[..., 0])), 1e-4),
        "cmyk jpeg": (png(cmyk_to_rgb(stored_pixels(m["cmyk jpeg"]))), 5e-4),
        "16-bit png": (png(gray_to_rgb(np.round(GRAY16 * 255.0 / 65535).astype(np.uint8))), 1e-4),
        "palette png": (png(palette_to_rgb(m["palette png"])), 1e-4),
        "palette png with transparency": (png(palette_to_rgb(m["palette png with transparency"])), 1e-4),
        "bmp": (png(PHOTO), 1e-4),
        "single-page tiff": (png(PHOTO), 1e-4),
        # Orientation 6 means "rotate the stored pixels 90 degrees clockwise to display" (np.rot90 k=-1).
        "exif-rotated jpeg": (png(np.rot90(stored_pixels(m["exif-rotated jpeg"], "RGB"), -1)), 1e-4),
    }


def cases() -> list[Case]:
    """The corpus. Statuses: 400 unusable input, 415 unsupported format, 200 must work."""
    px = _pixels()
    c = "clinical_image"
    return [
        # unusable bytes -> 400/415 naming the field
        Case("empty clinical file", 400, c, _clin(b"")),
        Case("plain text", 415, c, _clin(b"this is a lesion, honestly\n" * 4)),
        Case("html page", 415, c, _clin(b"<!DOCTYPE html><html><body>upload</body></html>")),
        Case("pdf document", 415, c, _clin(b"%PDF-1.7\n1 0 obj <<>> endobj\n%%EOF\n")),
        Case("zip archive", 415, c, _clin(zip_bytes())),
        Case("random bytes", 415, c, _clin(bytes(np.random.default_rng(5).integers(0, 256, 512, dtype=np.uint8)))),
        Case("truncated jpeg", 400, c, _clin(JPEG[: len(JPEG) // 2])),
        Case("truncated png", 400, c, _clin(PNG[: len(PNG) // 2])),
        Case("jpeg header only", 400, c, _clin(JPEG[:200])),
        Case("png with corrupt data", 400, c, _clin(PNG[:60] + b"\x00" * 64 + PNG[124:])),
        Case("decompression bomb png 30000x30000", 400, c, _clin(png_declaring(30000, 30000))),
        Case("png declaring 9000x9000 (81 MP)", 400, c, _clin(png_declaring(9000, 9000))),
        Case("jpeg declaring 65000x65000", 400, c, _clin(jpeg_declaring(65000, 65000))),
        Case("1x1 image", 400, c, _clin(encode(Image.new("RGB", (1, 1)), "PNG"))),
        Case("8x200 sliver", 400, c, _clin(encode(Image.new("RGB", (200, 8)), "PNG"))),
        Case("heic container without an image", 400, c,
             _clin(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64)),
        Case("truncated webp", 400, c, _clin(encode(Image.fromarray(px), "WEBP")[:80])),
        Case("animated webp", 400, c, _clin(animated("WEBP"))),
        Case("animated avif", 400, c, _clin(animated("AVIF"))),
        Case("heif image collection", 400, c, _clin(animated("HEIF"))),
        Case("png declaring 6000x5000 (30 MP: over the full-decode limit)", 400, c,
             _clin(png_declaring(6000, 5000))),
        Case("static gif", 415, c, _clin(encode(Image.fromarray(px).convert("P"), "GIF"))),
        Case("animated gif", 415, c, _clin(animated_gif())),
        Case("multi-page tiff", 400, c, _clin(multipage_tiff())),
        # fields
        Case("missing clinical (dermoscopy only)", 400, c, (("dermoscopy_image", GOOD),)),
        Case("only unknown fields", 400, "photo", (("photo", GOOD),)),
        Case("unknown field beside clinical", 400, "extra", (("clinical_image", GOOD), ("extra", GOOD))),
        Case("misspelled optional field", 400, "dermoscopy", (("clinical_image", GOOD), ("dermoscopy", GOOD))),
        Case("bad dermoscopy beside good clinical", 415, "dermoscopy_image",
             (("clinical_image", GOOD), ("dermoscopy_image", b"GIF89a not an image"))),
        Case("empty multispectral", 400, "multispectral_image",
             (("clinical_image", GOOD), ("multispectral_image", b""))),
        # JSON bodies
        Case("json broken base64", 400, c, json_body=json.dumps({c: "@@not base64@@"}).encode()),
        Case("json number instead of string", 400, c, json_body=json.dumps({c: 12345}).encode()),
        Case("json list instead of string", 400, c, json_body=json.dumps({c: [b64(GOOD)]}).encode()),
        Case("json array body", 400, "body", json_body=json.dumps([b64(GOOD)]).encode()),
        Case("json syntax error", 400, "body", json_body=b'{"clinical_image": "abc"'),
        Case("json null clinical", 400, c, json_body=json.dumps({c: None}).encode()),
        Case("json repeated key", 400, c,
             json_body=f'{{"{c}": "{b64(GOOD)}", "{c}": "{b64(GOOD)}"}}'.encode()),
        Case("json unknown key", 400, "image", json_body=json.dumps({"image": b64(GOOD)}).encode()),
        Case("json base64 of a pdf", 415, c, json_body=json.dumps({c: b64(b"%PDF-1.4 hello")}).encode()),
        Case("json empty object", 400, c, json_body=b"{}"),
        # inputs that must work
        *(Case(name, 200, parts=_clin(data)) for name, data in MUST_WORK.items()),
        # the formats phones write (tests/test_formats.py checks they score like their pixels as PNG)
        Case("webp", 200, parts=_clin(encode(Image.fromarray(px), "WEBP"))),
        Case("lossless webp", 200, parts=_clin(encode(Image.fromarray(px), "WEBP", lossless=True))),
        Case("heic", 200, parts=_clin(encode(Image.fromarray(px), "HEIF"))),
        Case("avif", 200, parts=_clin(encode(Image.fromarray(px), "AVIF"))),
        Case("mpo (a phone jpeg with a second picture)", 200, parts=_clin(mpo_bytes())),
        Case("progressive jpeg", 200, parts=_clin(encode(Image.fromarray(px), "JPEG", progressive=True))),
        Case("jpeg with trailing bytes", 200, parts=_clin(GOOD_JPEG + b"\x00trailing")),
        Case("json data url", 200, json_body=json.dumps({c: "data:image/png;base64," + b64(GOOD)}).encode()),
        Case("json all three modalities", 200, json_body=json.dumps(
            {c: b64(GOOD), "dermoscopy_image": b64(JPEG), "multispectral_image": b64(PNG)}).encode()),
    ]


CASES: list[Case] = cases()
