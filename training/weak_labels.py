"""Weak labels: score an unannotated dataset folder with the colorimetric reference, so it can be trained on.

``python -m training.weak_labels --data DIR [--source auto|dermoscopy|clinical] [--out DIR/labels.csv] [--overwrite]``

reads the documented layout (``DIR/clinical/images/<id>.*``, optional ``DIR/dermoscopy/images/<id>.*``) and writes
``labels.csv`` with the columns the training loader reads (``lesion_id, score, patient_id``; patient_id is left
empty, so each lesion is its own patient until the user fills it in) plus ``label_source`` = ``weak:colorimetric-v1``
and what the score was made from (``source_modality, area_fraction, delta_L, delta_E, ita, skin_tone_band``), which
the loader ignores. The score is :attr:`model.colorimetry.ColorimetryResult.severity`.

Policy:

* An existing labels file is never replaced without ``--overwrite``: it may hold a person's annotations.
* ``auto`` measures the dermoscopy image when the lesion has one, else the clinical photo. Areas in a clinical
  photo depend on its framing (see ``model.colorimetry``), so clinical-sourced scores are less comparable;
  ``source_modality`` says which image each score came from.
* A lesion whose segmentation fails (empty mask, mask covering the image, too little contrast, no skin around
  it), whose image cannot be read, or that lacks the requested view gets **no row** in labels.csv: a guessed
  score would train the model on noise, and an empty one would be skipped by the loader anyway. Each is listed
  with its reason in ``weak_labels_report.json`` beside the labels file, with counts by source and skin tone.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from model.cli import run
from model.colorimetry import VERSION, SegmentationError, measure
from model.preprocessing import InputError, load_image
from training.data import LABELS_FILE, find_images

LABEL_SOURCE = f"weak:{VERSION}"
SOURCES: tuple[str, ...] = ("auto", "dermoscopy", "clinical")
COLUMNS: tuple[str, ...] = (
    "lesion_id", "score", "patient_id", "label_source", "source_modality",
    "area_fraction", "delta_L", "delta_E", "ita", "skin_tone_band",
)  # fmt: skip
REPORT_FILE = "weak_labels_report.json"


def label_lesion(lesion_id: str, image_path: Path, modality: str) -> dict[str, str]:
    """One labels.csv row from one image. Raises SegmentationError or InputError when it cannot be scored."""
    result = measure(np.asarray(load_image(image_path)))
    return {
        "lesion_id": lesion_id,
        "score": f"{result.severity:.4f}",
        "patient_id": "",
        "label_source": LABEL_SOURCE,
        "source_modality": modality,
        "area_fraction": f"{result.area_fraction:.5f}",
        "delta_L": f"{result.delta_L:.3f}",
        "delta_E": f"{result.delta_E:.3f}",
        "ita": f"{result.ita:.2f}",
        "skin_tone_band": result.skin_tone_band,
    }


def choose_image(lesion_id: str, images: dict[str, dict[str, Path]], source: str) -> tuple[str, Path]:
    """(modality, path) of the image to measure; raises LookupError naming what is missing."""
    if lesion_id not in images["clinical"]:
        raise LookupError("no clinical image (the model needs one; the lesion could not be trained on)")
    if source == "clinical" or (source == "auto" and lesion_id not in images["dermoscopy"]):
        return "clinical", images["clinical"][lesion_id]
    if lesion_id not in images["dermoscopy"]:
        raise LookupError("no dermoscopy image (--source dermoscopy)")
    return "dermoscopy", images["dermoscopy"][lesion_id]


def label_folder(data_dir: str | Path, source: str = "auto", out: str | Path | None = None,
                 overwrite: bool = False) -> dict[str, Any]:
    """Write weak labels for every lesion under ``data_dir`` and the report beside them; returns the report."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    data_dir = Path(data_dir)
    out = Path(out) if out is not None else data_dir / LABELS_FILE
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"{out} exists and may hold annotations; pass --out elsewhere, or --overwrite to replace it"
        )
    images = {m: find_images(data_dir / m / "images") for m in ("clinical", "dermoscopy")}
    lesion_ids = sorted(set(images["clinical"]) | set(images["dermoscopy"]))
    if not lesion_ids:
        raise FileNotFoundError(f"{data_dir}: no images under clinical/images/ or dermoscopy/images/")
    rows, skipped = [], []
    for lesion_id in lesion_ids:
        try:
            modality, path = choose_image(lesion_id, images, source)
            rows.append(label_lesion(lesion_id, path, modality))
        except LookupError as exc:
            skipped.append({"lesion_id": lesion_id, "reason": "missing image", "detail": str(exc)})
        except SegmentationError as exc:
            skipped.append({"lesion_id": lesion_id, "reason": exc.reason, "detail": str(exc)})
        except InputError as exc:
            skipped.append({"lesion_id": lesion_id, "reason": "unreadable image", "detail": str(exc)})
    _write_atomically(out, lambda f: _write_csv(f, rows))
    report = {
        "label_source": LABEL_SOURCE,
        "data": str(data_dir),
        "labels": str(out),
        "source": source,
        "labelled": len(rows),
        "skipped": len(skipped),
        "by_source_modality": dict(Counter(r["source_modality"] for r in rows)),
        "by_skin_tone_band": dict(Counter(r["skin_tone_band"] for r in rows)),
        "skipped_lesions": skipped,
    }
    _write_atomically(out.parent / REPORT_FILE, lambda f: json.dump(report, f, indent=2))
    return report


def _write_csv(f, rows: list[dict[str, str]]) -> None:
    writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


def _write_atomically(path: Path, write) -> None:
    """Write through a temporary file in the same folder and rename it, so a crash leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.weak_labels", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="folder with clinical/images/ (and dermoscopy/images/)")
    p.add_argument("--source", choices=SOURCES, default="auto", help="which image to measure (default: auto)")
    p.add_argument("--out", type=Path, default=None, help="labels file to write (default: DATA/labels.csv)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing labels file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = label_folder(args.data, args.source, args.out, args.overwrite)  # a user's mistake: model.cli.run
    reasons = Counter(s["reason"] for s in report["skipped_lesions"])
    print(f"weak_labels: {report['labelled']} lesions labelled ({report['label_source']}) -> {report['labels']}; "
          f"skipped {report['skipped']} {dict(reasons) if reasons else ''}; report: {REPORT_FILE}")


if __name__ == "__main__":
    run(main)
