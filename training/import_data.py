"""Public datasets -> our manifest: ``python -m training.import_data {derm7pt,isic} SOURCE --out MANIFEST.csv``.

Options: ``--labels LABELS.csv --label-column C [--label-key K] [--label-range LO HI]`` (a user's severity score per
case or lesion, rescaled from [LO, HI] to [0, 1]), ``--weak-labels {dermoscopy,clinical,auto}`` (colorimetric
scores from ``training.weak_labels`` for lesions the labels file does not cover), ``--split official`` (Derm7pt's
train/valid/test index files).

Sources:

* ``derm7pt``: SOURCE is ``release_v0`` (or its parent): ``meta/meta.csv`` (one row per case: ``case_num``,
  ``clinic`` and ``derm`` image paths under ``images/``, ``location``, ``case_id``, ...) and
  ``meta/{train,valid,test}_indexes.csv`` (column ``indexes``: 0-based row positions in meta.csv). A case is one
  lesion of one patient (Derm7pt gives no patient ids); its id is ``case_id``, else ``case_num``.
* ``isic``: SOURCE is an ISIC Archive download (``isic image download``, MILK10k, ...): a ``metadata.csv`` (one row
  per image: ``isic_id``, ``image_type``, ``lesion_id``, ``patient_id``, ``anatom_site_general``,
  ``fitzpatrick_skin_type``, ...) and the images ``<isic_id>.<ext>`` anywhere under SOURCE. Images are grouped into
  lesions by ``lesion_id`` (an image without one is its own lesion) and lesions into patients by ``patient_id``,
  which is what training's patient-level split groups by. Per lesion one clinical photo (a ``clinical: close-up``
  before a ``clinical: overview``, then by ``isic_id``) and one ``dermoscopic`` image (by ``isic_id``) are used.

The manifest (``training.data``'s format; paths relative to the manifest's folder) has the columns
:data:`COLUMNS`: ``split`` only with ``--split official``; ``ita`` and ``skin_tone_band`` measured by
``model.colorimetry`` on the dermoscopy image, else the clinical one (``unmeasured`` when its segmentation fails);
``site`` and ``fitzpatrick`` copied from the source. A lesion without a label keeps an empty ``score``: training
skips and counts it, ``training.predict`` scores it.

Nothing is dropped silently: every source row (or image) that does not become a manifest lesion as it is, and every
lesion left without a label, is listed in ``<MANIFEST stem>.problems.csv`` beside the manifest with its reason
(:data:`REASONS`) and detail, and the counts are printed. Paths are resolved case-insensitively (``NEL/NEL025.JPG``
is found for ``nel/Nel025.jpg``), and with another image extension when only that exists.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.colorimetry import SegmentationError, measure
from model.preprocessing import InputError, load_image
from training.data import IMAGE_EXTENSIONS, read_csv_rows
from training.evaluate import UNMEASURED
from training.weak_labels import LABEL_SOURCE as WEAK_LABEL_SOURCE
from training.weak_labels import SOURCES as WEAK_SOURCES
from training.weak_labels import label_lesion

COLUMNS: tuple[str, ...] = (
    "lesion_id", "patient_id", "clinical", "dermoscopy", "score", "split", "label_source", "site", "fitzpatrick",
    "ita", "skin_tone_band", "source_id",
)  # fmt: skip
PROBLEM_COLUMNS: tuple[str, ...] = ("source_row", "source_id", "lesion_id", "reason", "detail")
REASONS: tuple[str, ...] = (
    "missing image", "no clinical photo", "unreadable image", "not in the official split", "image type not used",
    "extra image of the lesion", "no label", "weak label failed", "label for an unknown lesion",
)  # fmt: skip
DERM7PT_META_COLUMNS: tuple[str, ...] = (
    "case_num", "diagnosis", "seven_point_score", "pigment_network", "streaks", "pigmentation",
    "regression_structures", "dots_and_globules", "blue_whitish_veil", "vascular_structures",
    "level_of_diagnostic_difficulty", "elevation", "location", "sex", "management", "clinic", "derm", "case_id",
    "notes",
)  # fmt: skip
"""Derm7pt's meta.csv columns, in its order (the importer needs case_num, clinic and derm)."""
DERM7PT_SPLITS: dict[str, str] = {"train": "train", "valid": "val", "test": "test"}
"""Derm7pt index file ``meta/<name>_indexes.csv`` -> our split name."""
ISIC_DERMOSCOPIC = "dermoscopic"
ISIC_CLINICAL_ORDER: tuple[str, ...] = ("clinical: close-up", "clinical: overview")
"""Preference among an ISIC lesion's clinical photos; other ``clinical...`` types come after these."""
ISIC_SITE_COLUMNS: tuple[str, ...] = ("anatom_site_general", "anatom_site_general_challenge", "site")
ISIC_SKIN_TYPE_COLUMNS: tuple[str, ...] = ("fitzpatrick_skin_type", "skin_type")
LABEL_KEYS: tuple[str, ...] = ("lesion_id", "case_id", "case_num", "isic_id")
"""Columns a labels file may be keyed by (the first one present is used unless ``--label-key`` says otherwise)."""


class ImportFailure(ValueError):
    """The source as a whole cannot be imported (a user error: the CLI prints it and exits 2)."""


@dataclass
class Problem:
    source_row: str  # the row in the source table ("meta.csv:12", "metadata.csv:7", "labels.csv:3")
    source_id: str
    lesion_id: str
    reason: str
    detail: str

    def __post_init__(self) -> None:
        assert self.reason in REASONS, self.reason


@dataclass
class Record:
    """One lesion on its way into the manifest."""

    lesion_id: str
    patient_id: str
    clinical: Path
    dermoscopy: Path | None
    source_id: str
    source_row: str
    keys: dict[str, set[str]]  # label-key column -> this lesion's values for it
    split: str = ""
    site: str = ""
    fitzpatrick: str = ""
    score: str = ""
    label_source: str = ""
    ita: str = ""
    skin_tone_band: str = ""


@dataclass
class ImportResult:
    records: list[Record]
    problems: list[Problem] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# Finding files whatever their case
# ---------------------------------------------------------------------------------------------------------------


class CaseInsensitiveTree:
    """Resolves relative paths under ``root`` ignoring case, and, failing that, with another image extension.

    Each folder is listed once. An exact match wins over a case-insensitive one; two candidates that differ only by
    case (or by extension) are ambiguous, reported rather than guessed.
    """

    def __init__(self, root: Path):
        self.root = root
        self._listings: dict[Path, dict[str, list[str]]] = {}

    def resolve(self, relative: str) -> Path:
        """The file for ``relative``; raises FileNotFoundError naming the part that was not found."""
        parts = [p for p in relative.replace("\\", "/").split("/") if p not in ("", ".")]
        if not parts:
            raise FileNotFoundError("empty path")
        folder = self.root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            folder = self._child(folder, part, last)
        return folder

    def _child(self, folder: Path, name: str, last: bool) -> Path:
        listing = self._listing(folder)
        if (folder / name).exists() and name in listing.get(name.lower(), []):
            return folder / name
        matches = listing.get(name.lower(), [])
        if not matches and last and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
            stem = Path(name).stem.lower()
            matches = [n for ext in IMAGE_EXTENSIONS for n in listing.get(stem + ext, [])]
        if len(matches) == 1:
            return folder / matches[0]
        if matches:
            raise FileNotFoundError(f"{name} is ambiguous in {folder}: {sorted(matches)}")
        raise FileNotFoundError(f"no {name} in {folder}")

    def _listing(self, folder: Path) -> dict[str, list[str]]:
        if folder not in self._listings:
            names: dict[str, list[str]] = defaultdict(list)
            if folder.is_dir():
                for entry in os.scandir(folder):
                    names[entry.name.lower()].append(entry.name)
            self._listings[folder] = names
        return self._listings[folder]


def images_by_stem(root: Path) -> dict[str, list[Path]]:
    """``{lower-case stem: [paths]}`` of every image file under ``root`` (any depth, any extension case)."""
    found: dict[str, list[Path]] = defaultdict(list)
    for folder, _, files in os.walk(root):
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found[Path(name).stem.lower()].append(Path(folder) / name)
    return found


def readable(path: Path) -> str | None:
    """None if ``path`` decodes as training decodes it, else why not."""
    try:
        load_image(path)
    except (InputError, OSError) as exc:
        return str(exc)
    return None


# ---------------------------------------------------------------------------------------------------------------
# Derm7pt
# ---------------------------------------------------------------------------------------------------------------


def import_derm7pt(source: Path, official_split: bool = False) -> ImportResult:
    """Derm7pt's cases as lesions (see the module docstring); ``official_split`` fills ``split``."""
    release = source / "release_v0" if (source / "release_v0" / "meta").is_dir() else source
    meta_path = release / "meta" / "meta.csv"
    if not meta_path.is_file():
        raise ImportFailure(f"{meta_path}: missing; SOURCE must be Derm7pt's release_v0 folder (meta/meta.csv, "
                            f"images/)")
    rows = read_table(meta_path, required=("case_num", "clinic", "derm"))
    splits = read_derm7pt_splits(release / "meta", len(rows)) if official_split else {}
    tree = CaseInsensitiveTree(release / "images")
    result = ImportResult([])
    for position, (line, row) in enumerate(rows):
        case_num, case_id = row["case_num"].strip(), (row.get("case_id") or "").strip()
        lesion_id = case_id or case_num
        where = f"{meta_path.name}:{line}"

        def problem(reason: str, detail: str, lesion: str = lesion_id, at: str = where, case: str = case_num) -> None:
            result.problems.append(Problem(at, case, lesion, reason, detail))

        if official_split and position not in splits:
            problem("not in the official split", f"row position {position} is in none of meta/*_indexes.csv")
            continue
        clinical = _derm7pt_image(tree, row, "clinic", problem)
        if clinical is None:
            continue
        dermoscopy = _derm7pt_image(tree, row, "derm", problem, required=False)
        keys = {"lesion_id": {lesion_id}, "case_num": {case_num}, "case_id": {case_id} if case_id else set()}
        result.records.append(Record(lesion_id, lesion_id, clinical, dermoscopy, case_num, where, keys,
                                     split=splits.get(position, ""), site=(row.get("location") or "").strip()))
    _check_unique(result.records, meta_path)
    return result


def _derm7pt_image(tree: CaseInsensitiveTree, row: dict[str, str], column: str,
                   problem: Callable[..., None], required: bool = True) -> Path | None:
    """The resolved image of ``row[column]``, or None after listing why (clinic: the case is not used; derm: the
    case is used without dermoscopy)."""
    cell = (row.get(column) or "").strip()
    consequence = "case not used" if required else "case used without dermoscopy"
    if not cell:
        if required:
            problem("no clinical photo", f"the clinic cell is empty; {consequence}")
        return None
    try:
        path = tree.resolve(cell)
    except FileNotFoundError as exc:
        problem("missing image", f"{column} {cell}: {exc}; {consequence}")
        return None
    if (why := readable(path)) is not None:
        problem("unreadable image", f"{column} {path}: {why}; {consequence}")
        return None
    return path


def read_derm7pt_splits(meta: Path, n_rows: int) -> dict[int, str]:
    """``{row position: split}`` from ``meta/{train,valid,test}_indexes.csv``; a position in two files is an error."""
    positions: dict[int, str] = {}
    for name, split in DERM7PT_SPLITS.items():
        path = meta / f"{name}_indexes.csv"
        if not path.is_file():
            raise ImportFailure(f"{path}: missing; --split official needs Derm7pt's train/valid/test index files")
        for line, row in read_table(path, required=("indexes",)):
            try:
                position = int(row["indexes"].strip())
            except ValueError:
                raise ImportFailure(f"{path}:{line}: index {row['indexes']!r} is not an integer") from None
            if not 0 <= position < n_rows:
                raise ImportFailure(f"{path}:{line}: index {position} is outside meta.csv's {n_rows} rows")
            if position in positions:
                raise ImportFailure(f"{path}:{line}: row {position} is already in the {positions[position]} split")
            positions[position] = split
    return positions


# ---------------------------------------------------------------------------------------------------------------
# ISIC Archive
# ---------------------------------------------------------------------------------------------------------------


def import_isic(source: Path) -> ImportResult:
    """An ISIC download's images grouped into lesions and patients (see the module docstring)."""
    metadata = find_isic_metadata(source)
    rows = read_table(metadata, required=("isic_id", "image_type"))
    root = metadata.parent if source.is_file() else source
    files = images_by_stem(root)
    site_column = next((c for c in ISIC_SITE_COLUMNS if c in rows[0][1]), None) if rows else None
    skin_column = next((c for c in ISIC_SKIN_TYPE_COLUMNS if c in rows[0][1]), None) if rows else None
    lesions: dict[str, list[tuple[int, dict[str, str]]]] = defaultdict(list)
    for line, row in rows:
        isic_id = row["isic_id"].strip()
        lesions[(row.get("lesion_id") or "").strip() or isic_id].append((line, row))
    result = ImportResult([])
    for lesion_id, images in lesions.items():
        record = _isic_lesion(lesion_id, images, files, metadata.name, result.problems)
        if record is not None:
            chosen = next(r for _, r in images if r["isic_id"].strip() == record.source_id)
            record.site = _first_filled(chosen, images, site_column)
            record.fitzpatrick = _first_filled(chosen, images, skin_column)
            result.records.append(record)
    return result


def find_isic_metadata(source: Path) -> Path:
    if source.is_file():
        return source
    if (source / "metadata.csv").is_file():
        return source / "metadata.csv"
    candidates = sorted(p for p in source.glob("*.csv") if "metadata" in p.name.lower())
    if len(candidates) == 1:
        return candidates[0]
    raise ImportFailure(f"{source}: no metadata.csv (found {[p.name for p in candidates]}); pass the download "
                        f"folder holding ISIC's metadata.csv, or the metadata CSV itself")


def _isic_lesion(lesion_id: str, images: list[tuple[int, dict[str, str]]], files: dict[str, list[Path]],
                 table: str, problems: list[Problem]) -> Record | None:
    """One lesion's record from its image rows, or None (every row listed) when it has no usable clinical photo."""
    clinical: list[tuple[tuple[int, str], int, dict[str, str]]] = []
    dermoscopic: list[tuple[tuple[int, str], int, dict[str, str]]] = []
    for line, row in images:
        kind = (row.get("image_type") or "").strip().lower()
        isic_id = row["isic_id"].strip()
        if kind == ISIC_DERMOSCOPIC:
            dermoscopic.append(((0, isic_id), line, row))
        elif kind.startswith("clinical"):
            rank = ISIC_CLINICAL_ORDER.index(kind) if kind in ISIC_CLINICAL_ORDER else len(ISIC_CLINICAL_ORDER)
            clinical.append(((rank, isic_id), line, row))
        else:
            problems.append(Problem(f"{table}:{line}", isic_id, lesion_id, "image type not used",
                                    f"image_type {kind or '(empty)'!r}; the model takes clinical photos and "
                                    f"dermoscopic images"))
    chosen_clinical = _first_usable(sorted(clinical, key=lambda c: c[0]), files, table, lesion_id, problems)
    if chosen_clinical is None:
        for _, line, row in dermoscopic:
            problems.append(Problem(f"{table}:{line}", row["isic_id"].strip(), lesion_id, "no clinical photo",
                                    "the lesion has no usable clinical photo; lesion not used"))
        return None
    chosen_derm = _first_usable(sorted(dermoscopic, key=lambda c: c[0]), files, table, lesion_id, problems)
    (clin_path, clin_row, clin_line), derm = chosen_clinical, chosen_derm
    patient = (clin_row.get("patient_id") or "").strip() or lesion_id
    keys = {"lesion_id": {lesion_id}, "isic_id": {r["isic_id"].strip() for _, r in images}}
    return Record(lesion_id, patient, clin_path, derm[0] if derm else None, clin_row["isic_id"].strip(),
                  f"{table}:{clin_line}", keys)


def _first_usable(candidates: list[tuple[tuple[int, str], int, dict[str, str]]], files: dict[str, list[Path]],
                  table: str, lesion_id: str, problems: list[Problem]) -> tuple[Path, dict[str, str], int] | None:
    """The first candidate whose image exists and decodes; the others are listed (missing, unreadable, extra)."""
    chosen = None
    for _, line, row in candidates:
        isic_id = row["isic_id"].strip()
        where = f"{table}:{line}"
        if chosen is not None:
            problems.append(Problem(where, isic_id, lesion_id, "extra image of the lesion",
                                    f"lesion uses {chosen[1]['isic_id'].strip()} for its "
                                    f"{(row.get('image_type') or '').strip()} view (one image per modality)"))
            continue
        paths = files.get(isic_id.lower(), [])
        if len(paths) != 1:
            detail = f"no image file named {isic_id}.*" if not paths else f"several files: {sorted(map(str, paths))}"
            problems.append(Problem(where, isic_id, lesion_id, "missing image", detail))
            continue
        if (why := readable(paths[0])) is not None:
            problems.append(Problem(where, isic_id, lesion_id, "unreadable image", why))
            continue
        chosen = (paths[0], row, line)
    return chosen


def _first_filled(chosen: dict[str, str], images: list[tuple[int, dict[str, str]]], column: str | None) -> str:
    """``column`` of the chosen image's row, else of the first of the lesion's rows that has it."""
    if column is None:
        return ""
    for row in (chosen, *(r for _, r in images)):
        if (row.get(column) or "").strip():
            return row[column].strip()
    return ""


# ---------------------------------------------------------------------------------------------------------------
# Labels, skin tone
# ---------------------------------------------------------------------------------------------------------------


def apply_labels(result: ImportResult, labels: Path, column: str, key: str | None,
                 value_range: tuple[float, float]) -> None:
    """Fill ``score`` (rescaled from ``value_range`` to [0, 1]) from a user's labels file; rows matching no lesion
    are listed. A value outside the range or not a number is an error naming the row: usually a wrong scale."""
    rows = read_table(labels, required=(column,))
    header = rows[0][1].keys() if rows else []
    key = key or next((k for k in LABEL_KEYS if k in header), None)
    if key is None or key not in header:
        raise ImportFailure(f"{labels}: no key column; name one with --label-key (found {list(header)}, "
                            f"expected one of {LABEL_KEYS})")
    lo, hi = value_range
    if not hi > lo:
        raise ImportFailure(f"--label-range {lo} {hi}: the high end must be above the low end")
    by_key = {value: r for r in result.records for value in r.keys.get(key, ())}
    seen: set[str] = set()
    for line, row in rows:
        value, cell = row[key].strip(), (row.get(column) or "").strip()
        record = by_key.get(value)
        if record is None:
            result.problems.append(Problem(f"{labels.name}:{line}", value, "", "label for an unknown lesion",
                                           f"no imported lesion has {key} {value!r}"))
            continue
        if record.lesion_id in seen:
            raise ImportFailure(f"{labels}:{line}: a second label for lesion {record.lesion_id}; keep one row")
        seen.add(record.lesion_id)
        if not cell:
            continue
        try:
            number = float(cell)
        except ValueError:
            raise ImportFailure(f"{labels}:{line}: {column} {cell!r} is not a number") from None
        if not lo <= number <= hi:  # also rejects nan
            raise ImportFailure(f"{labels}:{line}: {column} {cell} is outside --label-range {lo:g} {hi:g}; give "
                                f"the labels' real range")
        record.score, record.label_source = f"{(number - lo) / (hi - lo):.6g}", f"labels:{labels.name}:{column}"


def apply_weak_labels(result: ImportResult, source: str) -> None:
    """Colorimetric scores (``training.weak_labels``) for the lesions still without a label."""
    for record in result.records:
        if record.score:
            continue
        modality = "clinical" if source == "clinical" or (source == "auto" and record.dermoscopy is None) \
            else "dermoscopy"
        path = record.clinical if modality == "clinical" else record.dermoscopy
        if path is None:
            result.problems.append(Problem(record.source_row, record.source_id, record.lesion_id,
                                           "weak label failed", "no dermoscopy image (--weak-labels dermoscopy)"))
            continue
        try:
            row = label_lesion(record.lesion_id, path, modality)
        except (SegmentationError, InputError) as exc:
            result.problems.append(Problem(record.source_row, record.source_id, record.lesion_id,
                                           "weak label failed", f"{modality}: {exc}"))
            continue
        record.score, record.label_source = row["score"], WEAK_LABEL_SOURCE


def measure_skin_tone(result: ImportResult) -> None:
    """ITA and its band of the skin around each lesion (dermoscopy, else clinical), ``unmeasured`` on failure."""
    for record in result.records:
        try:
            measured = measure(np.asarray(load_image(record.dermoscopy or record.clinical)))
        except (SegmentationError, InputError):
            record.ita, record.skin_tone_band = "", UNMEASURED
            continue
        record.ita, record.skin_tone_band = f"{measured.ita:.2f}", measured.skin_tone_band


def list_unlabelled(result: ImportResult) -> None:
    for record in result.records:
        if not record.score:
            result.problems.append(Problem(record.source_row, record.source_id, record.lesion_id, "no label",
                                           "kept with an empty score: training skips it, predict scores it"))


# ---------------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------------


def read_table(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """``(line, row)`` of a CSV (``training.data.read_csv_rows``); a missing column is an :class:`ImportFailure`."""
    try:
        return read_csv_rows(path, required)
    except ValueError as exc:
        raise ImportFailure(str(exc)) from None


def _check_unique(records: list[Record], source: Path) -> None:
    counts = Counter(r.lesion_id for r in records)
    repeated = [i for i, n in counts.items() if n > 1]
    if repeated:
        raise ImportFailure(f"{source}: lesion id(s) {repeated[:5]} appear more than once")


def problems_path(manifest: Path) -> Path:
    return manifest.with_name(f"{manifest.stem}.problems.csv")


def write_manifest(result: ImportResult, out: Path, with_split: bool) -> None:
    """The manifest (paths relative to its folder) and its problems file, each written whole or not at all."""
    out.parent.mkdir(parents=True, exist_ok=True)
    columns = [c for c in COLUMNS if with_split or c != "split"]
    base = out.parent.resolve()

    def relative(path: Path | None) -> str:
        return "" if path is None else os.path.relpath(path.resolve(), base)

    rows = [{c: getattr(r, c) for c in columns if c not in ("clinical", "dermoscopy")}
            | {"clinical": relative(r.clinical), "dermoscopy": relative(r.dermoscopy)} for r in result.records]
    _write_csv(out, columns, rows)
    _write_csv(problems_path(out), PROBLEM_COLUMNS, [vars(p) for p in result.problems])


def _write_csv(path: Path, columns: list[str] | tuple[str, ...], rows: list[dict[str, str]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------


def import_dataset(args: argparse.Namespace) -> ImportResult:
    if args.split == "official" and args.kind != "derm7pt":
        raise ImportFailure(f"--split official: {args.kind} has no official split; leave it out (training then "
                            f"splits by patient)")
    if not args.source.exists():
        raise ImportFailure(f"{args.source}: no such file or folder")
    if args.labels is not None and args.label_column is None:
        raise ImportFailure("--labels needs --label-column naming the score column")
    if args.labels is not None and not args.labels.is_file():
        raise ImportFailure(f"{args.labels}: no such labels file")
    result = import_derm7pt(args.source, args.split == "official") if args.kind == "derm7pt" \
        else import_isic(args.source)
    if not result.records:
        raise ImportFailure(f"{args.source}: no usable lesion ({len(result.problems)} problems, e.g. "
                            f"{[p.detail for p in result.problems[:3]]})")
    if args.labels is not None:
        apply_labels(result, args.labels, args.label_column, args.label_key, tuple(args.label_range))
    if args.weak_labels is not None:
        apply_weak_labels(result, args.weak_labels)
    measure_skin_tone(result)
    list_unlabelled(result)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.import_data", description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=("derm7pt", "isic"), help="the source's layout")
    p.add_argument("source", type=Path, help="Derm7pt's release_v0 folder, or an ISIC download folder")
    p.add_argument("--out", type=Path, required=True, help="manifest CSV to write")
    p.add_argument("--labels", type=Path, help="CSV with a severity score per case or lesion")
    p.add_argument("--label-column", help="the labels file's score column")
    p.add_argument("--label-key", choices=LABEL_KEYS, help="the labels file's key column (default: the first "
                                                          "of these present)")
    p.add_argument("--label-range", type=float, nargs=2, metavar=("LO", "HI"), default=(0.0, 1.0),
                   help="the score column's scale, mapped to 0..1 (default 0 1)")
    p.add_argument("--weak-labels", choices=WEAK_SOURCES, help="colorimetric scores for lesions without a label, "
                                                               "measured on this image")
    p.add_argument("--split", choices=("official",), help="keep the source's own split (Derm7pt)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> ImportResult:
    args = parse_args(argv)
    try:
        result = import_dataset(args)
    except ImportFailure as exc:
        print(f"import_data: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    write_manifest(result, args.out, with_split=args.split == "official")
    labelled = sum(1 for r in result.records if r.score)
    reasons = Counter(p.reason for p in result.problems)
    print(f"import_data: {len(result.records)} lesions ({labelled} labelled, "
          f"{len({r.patient_id for r in result.records})} patients) -> {args.out}; "
          f"problems: {dict(reasons) or 'none'} -> {problems_path(args.out)}")
    return result


if __name__ == "__main__":
    main()
