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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pillow_heif
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from model.config import MODALITIES, DataConfig

# HEIC/HEIF through libheif as a Pillow plugin (format "HEIF"). libheif applies the container's rotation and
# mirroring (irot/imir) while decoding and pillow-heif then resets the EXIF orientation to 1, so the
# exif_transpose in decode_image leaves a HEIC alone and never turns it twice. Thumbnails, depth and auxiliary
# images (an iPhone's gain and depth maps) are never scored, so they are not even read. AVIF is Pillow's own
# plugin (Pillow >= 11.3, libavif): it reports irot/imir as the EXIF orientation and leaves the pixels as
# stored, so exif_transpose turns it like a JPEG.
pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)

SUPPORTED_FORMATS: tuple[str, ...] = ("JPEG", "MPO", "PNG", "BMP", "TIFF", "WEBP", "HEIF", "AVIF")
"""Still-image formats we decode (MPO: the primary picture of a phone's multi-picture JPEG). Others (GIF, PDF,
...) are refused with 415 rather than guessed at."""

DRAFT_FORMATS: tuple[str, ...] = ("JPEG", "MPO")
"""Formats whose decoder can decode at a reduced scale (JPEG's DCT scaling); every other format is decoded at
full size, so its pixel count, not its byte count, is what a request costs (``ImageLimits.max_full_decode_pixels``)."""

# Magic numbers of the formats we decode: bytes that start like one but do not open are a broken file (400).
_SUPPORTED_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"WEBP", 8, "WebP"),
    *((b"ftyp" + brand, 4, "HEIF") for brand in (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1",
                                                  b"msf1")),
    (b"ftypavif", 4, "AVIF"),
    (b"ftypavis", 4, "AVIF"),
)
# Magic numbers of common non-image or unsupported uploads, so the error says what the bytes look like.
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"%PDF", 0, "a PDF document"),
    (b"PK\x03\x04", 0, "a ZIP archive"),
    (b"RIFF", 0, "a RIFF file that is not WebP"),
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

    max_pixels: int = 64_000_000  # JPEG/MPO (draft-decoded): a 50 MP phone photo fits, a decompression bomb not
    max_full_decode_pixels: int = 25_000_000  # formats decoded at full size: a 24 MP (5712x4284) HEIC fits
    min_side: int = 16
    formats: tuple[str, ...] = SUPPORTED_FORMATS


DEFAULT_LIMITS = ImageLimits()


def decode_image(data: bytes, field: str = "image", limits: ImageLimits = DEFAULT_LIMITS,
                 draft_size: int | None = None) -> Image.Image:
    """Decode one still image to an upright RGB ``PIL.Image``, or raise :class:`InputError` naming ``field``.

    Grayscale, RGBA/LA (alpha dropped), palette, CMYK and 16-bit images are converted to 8-bit RGB.
    An MPO (a phone's JPEG with extra pictures after it) is its primary picture. EXIF orientation is applied for
    every format (a HEIC's container rotation by libheif, see the plugin note above). The pixel limits are checked
    on the header before decoding. With ``draft_size``, a JPEG or MPO is decoded at the smallest DCT scale (1/2,
    1/4 or 1/8) that still has both sides >= ``draft_size``: a 12 MP photo decodes at ~1/8 of the work. Use
    :func:`decode_for_model`, which takes the choice from the DataConfig so that training and serving decode alike.
    """
    if not data:
        raise InputError(field, f"is empty (0 bytes); send an image ({', '.join(limits.formats)})")
    supported = ", ".join(limits.formats)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we apply our own pixel limit below
            img = Image.open(io.BytesIO(bytes(data)))
    except Image.DecompressionBombError as exc:
        raise InputError(field, f"image is too large to decode ({exc}); the limit is {limits.max_pixels} pixels")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, RuntimeError):  # RuntimeError: libheif
        head = bytes(data[:64])
        fmt = next((name for magic, at, name in _SUPPORTED_SIGNATURES if head[at:at + len(magic)] == magic), None)
        if fmt:
            raise InputError(field, f"starts like a {fmt} image but cannot be decoded (truncated or corrupt)") from None
        raise InputError(field, f"is not a decodable image ({_sniff(data)}); supported formats: {supported}", 415)
    if img.format not in limits.formats:
        raise InputError(field, f"{img.format} images are not supported; supported formats: {supported}", 415)
    frames = getattr(img, "n_frames", 1)
    if frames > 1 and img.format != "MPO":  # an MPO's other pictures (previews, gain or depth maps) are not scored
        raise InputError(field, f"has {frames} frames/pages; send a single still image")
    _check_size(img, field, limits)
    if draft_size and img.format in DRAFT_FORMATS:
        img.draft("RGB", (draft_size, draft_size))
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, RuntimeError) as exc:  # truncated or corrupt payloads surface here
        raise InputError(field, f"is a truncated or corrupt {img.format} image ({exc})") from None
    return _to_rgb(ImageOps.exif_transpose(img))


def _check_size(img: Image.Image, field: str, limits: ImageLimits) -> None:
    """Refuse from the header alone, before a pixel is decoded: too many pixels for the format, or too small."""
    width, height = img.size
    full_decode = img.format not in DRAFT_FORMATS
    limit = limits.max_full_decode_pixels if full_decode else limits.max_pixels
    if width * height > limit:
        why = f" for {img.format}, which is decoded at full size (a JPEG may have {limits.max_pixels})"
        raise InputError(field, f"is {width}x{height} = {width * height} pixels, over the limit of {limit}"
                                f"{why if full_decode else ''}; send a smaller image")
    if min(width, height) < limits.min_side:
        raise InputError(field, f"is {width}x{height}; each side must be at least {limits.min_side} pixels")


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
    if cfg.color_constancy and modality in cfg.color_constancy_views:
        rgb = shades_of_grey(rgb, cfg.color_constancy)
    if modality == "multispectral":
        planes, mean, std = _hsl_planes(rgb), cfg.ms_mean, cfg.ms_std
    else:
        planes, mean, std = [rgb[..., c] for c in range(3)], cfg.mean, cfg.std
    return torch.from_numpy(_normalized(planes, mean, std))


def _normalized(planes: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Three float32 planes ``[S, S]`` -> ``(plane - mean[c]) / std[c]`` channels-first ``[3, S, S]`` float32.

    Plane by plane into the output: the same float32 arithmetic as broadcasting over ``[S, S, 3]`` and transposing
    (the values are identical), several times cheaper than broadcasting's length-3 inner loop plus the copy.
    """
    out = np.empty((len(planes), *planes[0].shape), np.float32)
    for c, (plane, m, s) in enumerate(zip(planes, np.asarray(mean, np.float32), np.asarray(std, np.float32),
                                          strict=True)):
        np.subtract(plane, m, out=out[c])
        np.divide(out[c], s, out=out[c])
    return out


CONSTANCY_REFERENCE = (0.70, 0.56, 0.48)
"""The RGB colour :func:`shades_of_grey` maps a view's illuminant estimate to: a mid skin tone's, not grey, so that
skin keeps a stable hue (the hue of a grey pixel is noise, and the multispectral view is read as hue, saturation,
lightness), with room above it for glints and below it for the darkest lesions."""


def shades_of_grey(rgb: np.ndarray, p: float) -> np.ndarray:
    """Shades-of-grey colour constancy (Finlayson and Trezzi, 2004): ``[H, W, 3]`` RGB in [0, 1] -> the same image
    with each channel scaled so that its Minkowski ``p``-norm mean, the illuminant estimate, becomes that channel
    of :data:`CONSTANCY_REFERENCE`; clipped to [0, 1].

    ``p = 1`` is grey world, large ``p`` tends to max-RGB. A global gain or colour cast of the capture multiplies
    the estimate by the same factor, so it cancels; lesion-to-skin ratios, which the score reads, are kept.
    """
    illuminant = np.power(np.mean(np.power(rgb, p, dtype=np.float64), axis=(0, 1)), 1.0 / p)
    gains = np.asarray(CONSTANCY_REFERENCE) / np.maximum(illuminant, 1.0 / 255.0)
    return np.clip(rgb * gains.astype(np.float32), 0.0, 1.0)


def simulation_source(images: Mapping[str, object]) -> str:
    """The view a missing multispectral image is simulated from: the dermoscopy photo if there is one, else the
    clinical photo (``images`` maps modality -> decoded image)."""
    return "dermoscopy" if "dermoscopy" in images else "clinical"


def pseudo_multispectral(rgb: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` float32 RGB in [0, 1] -> ``[H, W, 3]`` (hue, saturation, lightness), each in [0, 1].

    Hue and saturation come from HSV, lightness is CIELAB L*; together they separate colour from intensity.
    """
    return np.stack(_hsl_planes(rgb), axis=-1).astype(np.float32)


def _hsl_planes(rgb: np.ndarray) -> list[np.ndarray]:
    """:func:`pseudo_multispectral`'s three channels as separate float32 planes ``[H, W]`` (hue, saturation, L*)."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)  # float input: H in [0, 360), S and V in [0, 1]
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)  # float input: L* in [0, 100]
    return [hsv[..., 0] / 360.0, hsv[..., 1], lab[..., 0] / 100.0]


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
