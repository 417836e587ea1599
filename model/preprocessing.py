"""Image bytes -> model tensor, for every modality. Training, evaluation and serving all call these functions.

The pipeline is ``decode`` (validate, EXIF orientation, RGB) then ``image_to_tensor`` (resize, scale to [0, 1],
the pseudo-multispectral conversion for that modality, normalization). Augmentation in training is random ops on
the decoded image followed by the same ``image_to_tensor``, so a served tensor equals the validation tensor bit
for bit (tests/test_preprocessing.py proves it).

The pseudo-multispectral view is simulated from an RGB photo as the design describes: H and S from HSV and L from
CIELAB, each scaled to [0, 1] and normalized with ``DataConfig.ms_mean``/``ms_std``. A file given as the
multispectral image is treated the same way (it is an RGB capture of the lesion); when a lesion has none and the
data config allows it, training derives the view from the dermoscopy (else the clinical) photo.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from model.config import MODALITIES, DataConfig

SUPPORTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "TIFF")
"""Still-image formats we decode. Others (WebP, GIF, HEIC, ...) are refused with 415 rather than guessed at."""

# Magic numbers of the formats we decode: bytes that start like one but do not open are a broken file (400).
_SUPPORTED_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
# Magic numbers of common non-image or unsupported uploads, so the error says what the bytes look like.
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"%PDF", 0, "a PDF document"),
    (b"PK\x03\x04", 0, "a ZIP archive"),
    (b"ftypheic", 4, "a HEIC image"),
    (b"ftypheix", 4, "a HEIC image"),
    (b"ftypmif1", 4, "a HEIF image"),
    (b"ftypavif", 4, "an AVIF image"),
    (b"RIFF", 0, "a RIFF file (WebP?)"),
    (b"GIF8", 0, "a GIF image"),
    (b"<!DOCTYPE", 0, "an HTML document"),
    (b"<html", 0, "an HTML document"),
)


class InputError(ValueError):
    """A user's image cannot be used. Carries the request field and the HTTP status that serving answers with."""

    def __init__(self, field: str, problem: str, status: int = 400):
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem
        self.status = status


@dataclass(frozen=True)
class ImageLimits:
    """What an uploaded or training image may be. One place; the README's "Limits" table lists these."""

    max_pixels: int = 64_000_000  # a 50 MP phone photo fits; a decompression bomb does not
    min_side: int = 16
    formats: tuple[str, ...] = SUPPORTED_FORMATS


DEFAULT_LIMITS = ImageLimits()


def decode_image(data: bytes, field: str = "image", limits: ImageLimits = DEFAULT_LIMITS,
                 draft_size: int | None = None) -> Image.Image:
    """Decode one still image to an upright RGB ``PIL.Image``, or raise :class:`InputError` naming ``field``.

    Grayscale, RGBA/LA (alpha dropped), palette, CMYK and 16-bit images are converted to 8-bit RGB.
    With ``draft_size``, a JPEG is decoded at the smallest DCT scale (1/2, 1/4 or 1/8) that still has both sides
    >= ``draft_size``: a 12 MP photo decodes at ~1/8 of the work. Use :func:`decode_for_model`, which takes the
    choice from the DataConfig so that training and serving decode alike.
    """
    if not data:
        raise InputError(field, "is empty (0 bytes); send a JPEG, PNG, BMP or TIFF image")
    supported = ", ".join(limits.formats)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we apply our own pixel limit below
            img = Image.open(io.BytesIO(bytes(data)))
    except Image.DecompressionBombError as exc:
        raise InputError(field, f"image is too large to decode ({exc}); the limit is {limits.max_pixels} pixels")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        fmt = next((name for magic, name in _SUPPORTED_SIGNATURES if bytes(data[:len(magic)]) == magic), None)
        if fmt:
            raise InputError(field, f"starts like a {fmt} image but cannot be decoded (truncated or corrupt)") from None
        raise InputError(field, f"is not a decodable image ({_sniff(data)}); supported formats: {supported}", 415)
    if img.format not in limits.formats:
        raise InputError(field, f"{img.format} images are not supported; supported formats: {supported}", 415)
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        raise InputError(field, f"has {frames} frames/pages; send a single still image")
    width, height = img.size
    if width * height > limits.max_pixels:
        raise InputError(field, f"is {width}x{height} = {width * height} pixels, over the limit of {limits.max_pixels}")
    if min(width, height) < limits.min_side:
        raise InputError(field, f"is {width}x{height}; each side must be at least {limits.min_side} pixels")
    if draft_size and img.format == "JPEG":
        img.draft("RGB", (draft_size, draft_size))
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt payloads surface here
        raise InputError(field, f"is a truncated or corrupt {img.format} image ({exc})") from None
    return _to_rgb(ImageOps.exif_transpose(img))


def decode_for_model(data: bytes, field: str, cfg: DataConfig, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """:func:`decode_image` with the data config's decode policy (JPEG draft decoding when ``cfg.jpeg_draft``)."""
    return decode_image(data, field, limits, draft_size=cfg.image_size if cfg.jpeg_draft else None)


def load_image(path: str | Path, cfg: DataConfig | None = None, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """Decode the image file at ``path`` (with ``cfg``'s decode policy when given); errors name the file."""
    path = Path(path)
    data = path.read_bytes()
    if cfg is None:
        return decode_image(data, field=str(path), limits=limits)
    return decode_for_model(data, str(path), cfg, limits)


def image_to_tensor(img: Image.Image, modality: str, cfg: DataConfig) -> torch.Tensor:
    """Decoded RGB image -> normalized float32 tensor ``[3, S, S]`` for ``modality`` (S = ``cfg.image_size``)."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    size = cfg.image_size
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    rgb = np.asarray(img, dtype=np.float32) / 255.0  # [S, S, 3]
    if modality == "multispectral":
        channels, mean, std = pseudo_multispectral(rgb), cfg.ms_mean, cfg.ms_std
    else:
        channels, mean, std = rgb, cfg.mean, cfg.std
    normalized = (channels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(normalized.transpose(2, 0, 1)))


def simulation_source(images: Mapping[str, object]) -> str:
    """The view a missing multispectral image is simulated from: the dermoscopy photo if there is one, else the
    clinical photo (``images`` maps modality -> decoded image)."""
    return "dermoscopy" if "dermoscopy" in images else "clinical"


def pseudo_multispectral(rgb: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` float32 RGB in [0, 1] -> ``[H, W, 3]`` (hue, saturation, lightness), each in [0, 1].

    Hue and saturation come from HSV, lightness is CIELAB L*; together they separate colour from intensity.
    """
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)  # float input: H in [0, 360), S and V in [0, 1]
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)  # float input: L* in [0, 100]
    return np.stack([hsv[..., 0] / 360.0, hsv[..., 1], lab[..., 0] / 100.0], axis=-1).astype(np.float32)


def preprocess_bytes(data: bytes, modality: str, cfg: DataConfig, field: str | None = None,
                     limits: ImageLimits = DEFAULT_LIMITS) -> torch.Tensor:
    """Encoded image bytes -> ``[3, S, S]`` model tensor (the serving path)."""
    return image_to_tensor(decode_for_model(data, field or modality, cfg, limits), modality, cfg)


def preprocess_path(path: str | Path, modality: str, cfg: DataConfig,
                    limits: ImageLimits = DEFAULT_LIMITS) -> torch.Tensor:
    """Image file -> ``[3, S, S]`` model tensor (the offline path; identical to :func:`preprocess_bytes`)."""
    return image_to_tensor(load_image(path, cfg, limits), modality, cfg)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: PIL's convert("L") clips at 255, so scale the full range down to 8 bits instead.
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode != "I" or arr.max() > 255 else 255.0
        arr = np.clip(np.round(arr / peak * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")  # 2-D uint8 -> mode L
    if img.mode == "P":
        img = img.convert("RGBA")
    return img.convert("RGB")


def _sniff(data: bytes) -> str:
    head = bytes(data[:64])
    for magic, offset, name in _SIGNATURES:
        if head[offset:offset + len(magic)].lower() == magic.lower():
            return f"looks like {name}"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "looks like text"
    return "unrecognized bytes"
