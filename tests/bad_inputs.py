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
from PIL import Image

from tests.images import image_bytes


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


def exif_rotated_jpeg() -> bytes:
    img = Image.fromarray(_pixels(40, 90))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    return encode(img, "JPEG", exif=exif.tobytes())


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


def cases() -> list[Case]:
    """The corpus. Statuses: 400 unusable input, 415 unsupported format, 200 must work."""
    px = _pixels()
    gray16 = Image.fromarray((np.linspace(0, 65535, 64 * 80).reshape(64, 80)).astype(np.uint16))
    palette_t = Image.fromarray(px).convert("P")
    palette_t.info["transparency"] = 0
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
        Case("heic renamed jpg", 415, c, _clin(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64)),
        Case("webp", 415, c, _clin(encode(Image.fromarray(px), "WEBP"))),
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
        Case("empty multispectral", 400, "multispectral_image", (("clinical_image", GOOD), ("multispectral_image", b""))),
        # JSON bodies
        Case("json broken base64", 400, c, json_body=json.dumps({c: "@@not base64@@"}).encode()),
        Case("json number instead of string", 400, c, json_body=json.dumps({c: 12345}).encode()),
        Case("json list instead of string", 400, c, json_body=json.dumps({c: [b64(GOOD)]}).encode()),
        Case("json array body", 400, "body", json_body=json.dumps([b64(GOOD)]).encode()),
        Case("json syntax error", 400, "body", json_body=b'{"clinical_image": "abc"'),
        Case("json null clinical", 400, c, json_body=json.dumps({c: None}).encode()),
        Case("json repeated key", 400, c, json_body=('{"%s": "%s", "%s": "%s"}' % (c, b64(GOOD), c, b64(GOOD))).encode()),
        Case("json unknown key", 400, "image", json_body=json.dumps({"image": b64(GOOD)}).encode()),
        Case("json base64 of a pdf", 415, c, json_body=json.dumps({c: b64(b"%PDF-1.4 hello")}).encode()),
        Case("json empty object", 400, c, json_body=b"{}"),
        # inputs that must work
        Case("grayscale png", 200, parts=_clin(encode(Image.fromarray(px).convert("L"), "PNG"))),
        Case("grayscale jpeg", 200, parts=_clin(encode(Image.fromarray(px).convert("L"), "JPEG"))),
        Case("rgba png", 200, parts=_clin(encode(Image.fromarray(px).convert("RGBA"), "PNG"))),
        Case("la png", 200, parts=_clin(encode(Image.fromarray(px).convert("LA"), "PNG"))),
        Case("cmyk jpeg", 200, parts=_clin(encode(Image.fromarray(px).convert("CMYK"), "JPEG"))),
        Case("16-bit png", 200, parts=_clin(encode(gray16, "PNG"))),
        Case("palette png", 200, parts=_clin(encode(Image.fromarray(px).convert("P"), "PNG"))),
        Case("palette png with transparency", 200, parts=_clin(encode(palette_t, "PNG"))),
        Case("bmp", 200, parts=_clin(encode(Image.fromarray(px), "BMP"))),
        Case("single-page tiff", 200, parts=_clin(encode(Image.fromarray(px), "TIFF"))),
        Case("progressive jpeg", 200, parts=_clin(encode(Image.fromarray(px), "JPEG", progressive=True))),
        Case("exif-rotated jpeg", 200, parts=_clin(exif_rotated_jpeg())),
        Case("jpeg with trailing bytes", 200, parts=_clin(GOOD_JPEG + b"\x00trailing")),
        Case("json data url", 200, json_body=json.dumps({c: "data:image/png;base64," + b64(GOOD)}).encode()),
        Case("json all three modalities", 200, json_body=json.dumps(
            {c: b64(GOOD), "dermoscopy_image": b64(JPEG), "multispectral_image": b64(PNG)}).encode()),
    ]


CASES: list[Case] = cases()
