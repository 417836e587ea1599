"""Small on-disk datasets for the training-side tests: the documented folder layout, written with PIL."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> Path:
    """A distinct RGB image (seeded noise over a per-seed colour), format from the suffix."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 216, size=3)
    pixels = np.clip(base + rng.integers(-40, 41, size=(size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def write_labels(root: Path, rows: list[dict[str, object]], name: str = "labels.csv") -> Path:
    path = root / name
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def make_layout(root: Path, ids: list[str], dermoscopy: list[str] | None = None,
                multispectral: list[str] | tuple[str, ...] = (), labelled: list[str] | None = None,
                patients: int | None = None, clinical_ext: str = ".jpg") -> Path:
    """Write ``root`` in the documented layout: clinical images for ``ids``, dermoscopy (default: all ids) and
    multispectral PNGs for the given ids, and labels.csv for ``labelled`` (default: all ids) with scores spread
    over [0, 1] and, with ``patients``, lesions assigned round-robin to that many patients."""
    dermoscopy = ids if dermoscopy is None else dermoscopy
    labelled = ids if labelled is None else labelled
    for i, lesion_id in enumerate(ids):
        write_image(root / "clinical" / "images" / f"{lesion_id}{clinical_ext}", seed=3 * i)
    for i, lesion_id in enumerate(dermoscopy):
        write_image(root / "dermoscopy" / "images" / f"{lesion_id}.png", seed=3 * i + 1, size=(40, 40))
    for i, lesion_id in enumerate(multispectral):
        write_image(root / "multispectral" / "images" / f"{lesion_id}.png", seed=3 * i + 2, size=(40, 40))
    rows = []
    for i, lesion_id in enumerate(labelled):
        row: dict[str, object] = {"lesion_id": lesion_id, "score": round(i / max(1, len(labelled) - 1), 4)}
        if patients:
            row["patient_id"] = f"P{i % patients}"
        rows.append(row)
    write_labels(root, rows)
    return root
