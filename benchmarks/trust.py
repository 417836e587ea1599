"""Measure what docs/trust.md reports: image-quality warning rates and out-of-distribution flag rates.

    python -m benchmarks.trust quality --data DIR [--n 200] --out docs/trust_quality.json
    python -m benchmarks.trust ood --checkpoint CKPT --heldout DIR --out docs/trust_ood.json

``quality``: each synthetic view as rendered (sharp, well exposed) and degraded copies: Gaussian blur of sigma 1, 2
and 3 pixels of the 256-px working size (scaled to the image's own size), darkened (x0.2) and brightened (x2.5,
clipped); the share of each modality's images that gets each warning.

``ood``: the share of requests flagged ``in_distribution: false`` (clinical photo only, no simulation, as a user
would send it) for real photos that are not skin (matplotlib's and scikit-learn's sample photos, and crops of
them), images rendered here that look nothing like lesions, and the held-out benchmark lesions with their own
views, as rendered and after a lighting/framing shift (darker warm light, 2x zoom).
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from model import quality, scoring
from model.checkpoint import load_for_inference
from model.colorimetry import WORK_SIDE
from training.data import index_dataset, lesion_sample

EXTS = {"clinical": "jpg", "dermoscopy": "png", "multispectral": "png"}


# --------------------------------------------------------------------------------------------------- quality


def degradations() -> dict[str, Callable[[Image.Image], Image.Image]]:
    def blur(sigma_work_px: float) -> Callable[[Image.Image], Image.Image]:
        return lambda img: img.filter(ImageFilter.GaussianBlur(sigma_work_px * max(img.size) / WORK_SIDE))

    return {
        "as rendered": lambda img: img,
        "blur sigma 1": blur(1.0),
        "blur sigma 2": blur(2.0),
        "blur sigma 3": blur(3.0),
        "darkened x0.2": lambda img: ImageEnhance.Brightness(img).enhance(0.2),
        "brightened x2.5": lambda img: ImageEnhance.Brightness(img).enhance(2.5),
    }


def quality_rates(data: Path, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for modality, ext in EXTS.items():
        files = sorted((data / modality / "images").glob(f"*.{ext}"))[:n]
        per: dict[str, Any] = {}
        for name, degrade in degradations().items():
            reports = [quality.check(degrade(Image.open(f).convert("RGB")), modality) for f in files]
            blur = np.array([r.blur for r in reports])
            per[name] = {"n": len(reports),
                         "blur_p1_p50_p99": [round(float(v), 3) for v in np.percentile(blur, [1, 50, 99])],
                         **{w: round(sum(w in r.warnings for r in reports) / len(reports), 3)
                            for w in quality.WARNINGS}}
        out[modality] = per
    return out


# ------------------------------------------------------------------------------------------------------- OOD


def natural_photos() -> Iterator[tuple[str, Image.Image]]:
    """Real photos that are not skin, shipped by matplotlib and scikit-learn, and 8 seeded crops of each."""
    import matplotlib
    import sklearn.datasets

    paths = [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
             Path(matplotlib.get_data_path()) / "sample_data" / "Minduka_Present_Blue_Pack.png",
             Path(sklearn.datasets.__file__).parent / "images" / "china.jpg",
             Path(sklearn.datasets.__file__).parent / "images" / "flower.jpg"]
    rng = np.random.default_rng(0)
    for path in paths:
        photo = Image.open(path).convert("RGB")
        yield path.name, photo
        for k in range(8):
            side = int(min(photo.size) * rng.uniform(0.3, 0.8))
            x, y = int(rng.integers(0, photo.width - side + 1)), int(rng.integers(0, photo.height - side + 1))
            yield f"{path.name}#crop{k}", photo.crop((x, y, x + side, y + side)).resize((384, 288))


def rendered_images() -> Iterator[tuple[str, Image.Image]]:
    """Images that look nothing like a lesion: flat colours, gradients, stripes, checkerboards, noise, shapes,
    text, a green 'lawn' texture and bare skin with no lesion."""
    rng = np.random.default_rng(1)
    w, h = 384, 288
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    for i, colour in enumerate([(0, 0, 0), (255, 255, 255), (30, 90, 200), (220, 40, 40), (128, 128, 128)]):
        yield f"flat{i}", Image.new("RGB", (w, h), colour)
    for i in range(3):
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        yield f"gradient{i}", _img(a * (1 - xx[..., None]) + b * xx[..., None])
    for i, period in enumerate((8, 32)):
        yield f"stripes{i}", _img(np.repeat((127 + 127 * np.sin(2 * np.pi * xx * w / period))[..., None], 3, 2))
        yield f"checker{i}", _img(np.repeat((((xx * w // period) + (yy * h // period)) % 2 * 255)[..., None], 3, 2))
    for i in range(3):
        yield f"noise{i}", _img(rng.integers(0, 256, (h, w, 3)))
    for i in range(3):
        img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(12):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            draw.rectangle((x0, y0, x0 + int(rng.integers(10, 120)), y0 + int(rng.integers(10, 120))),
                           fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        yield f"shapes{i}", img
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    for row in range(14):
        draw.text((10, 10 + 20 * row), "The quick brown fox jumps over the lazy dog " * 2, fill="black")
    yield "text", img
    lawn = np.stack([40 + 40 * rng.random((h, w)), 110 + 80 * rng.random((h, w)), 30 + 30 * rng.random((h, w))], 2)
    yield "lawn", _img(np.asarray(Image.fromarray(lawn.astype(np.uint8)).filter(ImageFilter.GaussianBlur(1))))
    for i, tone in enumerate([(224, 185, 160), (150, 100, 75)]):
        skin = np.array(tone) * (0.9 + 0.2 * xx[..., None]) + rng.normal(0, 4, (h, w, 3))
        yield f"bare_skin{i}", _img(skin)


def shifted(img: Image.Image) -> Image.Image:
    """Another camera and framing: darker, warmer light and a 2x zoom on the centre."""
    w, h = img.size
    img = img.crop((w // 4, h // 4, w - w // 4, h - h // 4)).resize((w, h), Image.Resampling.BICUBIC)
    img = ImageEnhance.Brightness(img).enhance(0.6)
    r, g, b = img.split()
    return Image.merge("RGB", (r.point(lambda v: min(255, int(v * 1.15))), g, b.point(lambda v: int(v * 0.8))))


def _img(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def _encode(img: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=92)
    return buf.getvalue()


def flagged_share(loaded, named: list[tuple[str, dict[str, bytes]]], batch: int = 16) -> dict[str, Any]:
    """Score requests ``[(name, {modality: bytes})]`` without simulation; the share with in_distribution false."""
    answers = []
    for start in range(0, len(named), batch):
        samples = [scoring.prepare(sources, loaded.data_cfg) for _, sources in named[start:start + batch]]
        answers += scoring.assess(loaded, scoring.forward_all(loaded.model, samples), samples)
    flags = [a["in_distribution"] is False for a in answers]
    return {"n": len(flags), "flagged": round(float(np.mean(flags)), 4),
            "not_flagged": [name for (name, _), f in zip(named, flags, strict=True) if not f][:20],
            "ood_score_median": round(float(np.median([a["ood_score"] for a in answers])), 3)}


def ood_rates(checkpoint: Path, heldout: Path) -> dict[str, Any]:
    loaded = load_for_inference(checkpoint)
    photos = [(n, {"clinical": _encode(img)}) for n, img in natural_photos()]
    rendered = [(n, {"clinical": _encode(img, "PNG")}) for n, img in rendered_images()]
    lesions = index_dataset(heldout).lesions
    own, moved = [], []
    for lesion in lesions:
        views = {m: lesion.path(m) for m in EXTS if lesion.path(m) is not None}
        own.append((lesion.lesion_id, {m: p.read_bytes() for m, p in views.items()}))
        moved.append((lesion.lesion_id, {m: _encode(shifted(Image.open(p).convert("RGB")), "PNG")
                                         for m, p in views.items()}))
    with_simulation = _with_simulation(loaded, lesions)
    return {
        "checkpoint": str(checkpoint), "model_version": loaded.version, "heldout": str(heldout),
        "thresholds": dict(loaded.trust.ood.thresholds),
        "natural_photos_clinical_only": flagged_share(loaded, photos),
        "natural_photos_as_clinical_and_dermoscopy": flagged_share(
            loaded, [(n, {"clinical": s["clinical"], "dermoscopy": s["clinical"]}) for n, s in photos]),
        "rendered_clinical_only": flagged_share(loaded, rendered),
        "heldout_lesions_own_views": flagged_share(loaded, own),
        "heldout_lesions_own_views_simulated_multispectral": with_simulation,
        "heldout_lesions_shifted_lighting_framing": flagged_share(loaded, moved),
    }


def _with_simulation(loaded, lesions, batch: int = 16) -> dict[str, Any]:
    """Held-out lesions as evaluation sees them (multispectral simulated when the data config says so)."""
    flags = []
    for start in range(0, len(lesions), batch):
        samples = [lesion_sample(x, loaded.data_cfg) for x in lesions[start:start + batch]]
        answers = scoring.assess(loaded, scoring.forward_all(loaded.model, samples), samples)
        flags += [a["in_distribution"] is False for a in answers]
    return {"n": len(flags), "flagged": round(float(np.mean(flags)), 4)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.trust", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--data", type=Path, required=True)
    q.add_argument("--n", type=int, default=200)
    q.add_argument("--out", type=Path, required=True)
    o = sub.add_parser("ood")
    o.add_argument("--checkpoint", type=Path, required=True)
    o.add_argument("--heldout", type=Path, required=True)
    o.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    result = quality_rates(args.data, args.n) if args.what == "quality" else ood_rates(args.checkpoint, args.heldout)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
