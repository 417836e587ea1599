"""Matched multi-modal lesions on disk -> an index, a patient-level split, and a torch Dataset.

Two ways to describe a dataset, chosen by what ``--data`` points at:

* a folder in the documented layout, matched by file stem (any case of the extensions in ``IMAGE_EXTENSIONS``:
  JPEG, PNG, BMP, TIFF, WebP, HEIC/HEIF, AVIF)::

      DATA/clinical/images/<lesion_id>.jpg        required per lesion
      DATA/dermoscopy/images/<lesion_id>.png      optional
      DATA/multispectral/images/<lesion_id>.png   optional
      DATA/labels.csv                             lesion_id, score (0..1), optional patient_id; other columns ignored

* a manifest CSV with columns ``lesion_id, clinical, dermoscopy, multispectral, score, patient_id`` (paths relative
  to the CSV's folder or absolute; an empty cell means absent; dermoscopy, multispectral and patient_id columns are
  optional), and optionally ``split`` (``train``, ``val`` or ``test``: when filled, training uses it instead of the
  random patient split, see :func:`split_from_manifest`), ``skin_tone_band`` and ``site`` (evaluation reports
  metrics per value). ``python -m training.import_data`` writes such manifests from Derm7pt and the ISIC Archive.

Policy, so nothing disappears silently: lesions without a clinical image or without a label (an empty score cell
counts as no label) are skipped, counted in :attr:`DatasetIndex.skipped` and logged. A score that is not a number in
[0, 1] is an error naming the file and row, since it usually means a wrong scale for the whole file. Without a
``patient_id`` each lesion is its own patient.

The eval tensors come from the one scoring path (``model.scoring.prepare_files``), exactly what serving computes;
training augmentation (:class:`Augmentation`) acts on those tensors, so the eval tensors can be cached once per
lesion. Geometric ops (flips, 90-degree rotations, small rotations, zoom crops) use one random draw per sample for
every modality, so the views of a lesion stay aligned; colour and lighting jitter draws per modality, since each
view is its own capture.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from model.config import AUX_MODALITIES, MODALITIES, DataConfig
from model.preprocessing import InputError
from model.scoring import Sample, collate, prepare_files

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".heic", ".heif",
                                     ".avif")
LABELS_FILE = "labels.csv"
SKIP_REASONS: tuple[str, ...] = ("no_clinical_image", "no_label", "bad_image")
SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Values of a manifest's ``split`` column."""


@dataclass(frozen=True)
class Lesion:
    """One labelled lesion: its image files (absent auxiliary ones are None) and ground truth."""

    lesion_id: str
    clinical: Path
    score: float
    patient_id: str
    dermoscopy: Path | None = None
    multispectral: Path | None = None
    split: str | None = None  # a manifest's fixed split (SPLITS), None for the random patient split
    skin_tone_band: str | None = None  # from a manifest; None: evaluation measures it
    site: str | None = None  # body site, from a manifest

    def path(self, modality: str) -> Path | None:
        return getattr(self, modality)


@dataclass
class DatasetIndex:
    """Everything found under ``source``: the usable lesions, and the ids skipped per reason."""

    source: Path
    lesions: list[Lesion]
    skipped: dict[str, list[str]] = field(default_factory=lambda: {r: [] for r in SKIP_REASONS})

    @property
    def data_hash(self) -> str:
        """A short fingerprint of the labels and the file list (names and sizes), for checkpoint provenance."""
        digest = hashlib.sha256()
        for lesion in sorted(self.lesions, key=lambda x: x.lesion_id):
            files = [f"{p.name}:{p.stat().st_size}" if p else "-" for p in (lesion.path(m) for m in MODALITIES)]
            digest.update(f"{lesion.lesion_id},{lesion.score!r},{lesion.patient_id},{','.join(files)}\n".encode())
        return digest.hexdigest()[:12]

    def skip_counts(self) -> dict[str, int]:
        return {reason: len(ids) for reason, ids in self.skipped.items()}


# ---------------------------------------------------------------------------------------------------------------
# Reading a dataset
# ---------------------------------------------------------------------------------------------------------------


def index_dataset(source: str | Path) -> DatasetIndex:
    """Index a dataset folder in the documented layout, or a manifest CSV (see the module docstring)."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        index = _index_manifest(source)
    elif source.is_dir():
        index = _index_folder(source)
    else:
        raise FileNotFoundError(
            f"{source}: no such dataset; pass a folder with clinical/images/ and labels.csv, or a manifest .csv"
        )
    if not index.lesions:
        raise ValueError(f"{source}: no usable lesions (skipped: {index.skip_counts()}); see the data layout in README")
    _report_skipped(index)
    return index


def _index_folder(root: Path) -> DatasetIndex:
    clinical_dir = root / "clinical" / "images"
    if not clinical_dir.is_dir():
        raise FileNotFoundError(
            f"{clinical_dir}: missing; a dataset folder needs clinical/images/<lesion_id>.jpg (plus optional "
            f"dermoscopy/images/ and multispectral/images/) and labels.csv"
        )
    labels_path = root / LABELS_FILE
    if not labels_path.is_file():
        raise FileNotFoundError(
            f"{labels_path}: missing; write a CSV with columns lesion_id,score[,patient_id] (score in 0..1)"
        )
    images = {m: find_images(root / m / "images") for m in MODALITIES}
    labels = read_labels(labels_path)
    index = DatasetIndex(root, [])
    for lesion_id in sorted(set(labels).union(*images.values())):
        if lesion_id not in images["clinical"]:
            index.skipped["no_clinical_image"].append(lesion_id)
        elif labels.get(lesion_id, (None,))[0] is None:
            index.skipped["no_label"].append(lesion_id)
        else:
            score, patient = labels[lesion_id]
            aux = {m: images[m].get(lesion_id) for m in AUX_MODALITIES}
            index.lesions.append(Lesion(lesion_id, images["clinical"][lesion_id], score, patient, **aux))
    return index


def find_images(folder: Path) -> dict[str, Path]:
    """``{stem: path}`` of the images in ``folder`` (empty if missing); two files with one stem are an error."""
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if path.stem in found:
            raise ValueError(
                f"{found[path.stem]} and {path}: two images for lesion {path.stem!r}; keep one of them "
                f"(lesions are matched across modalities by file name without extension)"
            )
        found[path.stem] = path
    return found


def read_labels(path: Path) -> dict[str, tuple[float | None, str]]:
    """``{lesion_id: (score or None if the cell is empty, patient_id)}`` from a labels CSV."""
    rows = read_csv_rows(path, required=("lesion_id", "score"))
    labels: dict[str, tuple[float | None, str]] = {}
    for line, row in rows:
        lesion_id = _lesion_id(row, path, line)
        if lesion_id in labels:
            raise ValueError(f"{path}, line {line}: lesion_id {lesion_id!r} appears twice; keep one row per lesion")
        labels[lesion_id] = (_score(row, path, line), (row.get("patient_id") or "").strip() or lesion_id)
    return labels


def _index_manifest(path: Path) -> DatasetIndex:
    rows = read_csv_rows(path, required=("lesion_id", "clinical", "score"))
    index = DatasetIndex(path, [])
    seen: set[str] = set()
    for line, row in rows:
        lesion_id = _lesion_id(row, path, line)
        if lesion_id in seen:
            raise ValueError(f"{path}, line {line}: lesion_id {lesion_id!r} appears twice; keep one row per lesion")
        seen.add(lesion_id)
        files = {m: _manifest_path(row, m, path, line) for m in MODALITIES}
        score = _score(row, path, line)
        split = _split(row, path, line)
        if files["clinical"] is None:
            index.skipped["no_clinical_image"].append(lesion_id)
        elif score is None:
            index.skipped["no_label"].append(lesion_id)
        else:
            patient = (row.get("patient_id") or "").strip() or lesion_id
            index.lesions.append(Lesion(lesion_id, files["clinical"], score, patient,
                                        files["dermoscopy"], files["multispectral"], split,
                                        _optional_cell(row, "skin_tone_band"), _optional_cell(row, "site")))
    return index


def _split(row: dict[str, str], path: Path, line: int) -> str | None:
    cell = (row.get("split") or "").strip().lower()
    if not cell:
        return None
    if cell not in SPLITS:
        raise ValueError(f"{path}, line {line}: split {cell!r} is not one of {SPLITS}; fix the cell or leave the "
                         f"whole column empty for a random patient split")
    return cell


def _optional_cell(row: dict[str, str], column: str) -> str | None:
    return (row.get(column) or "").strip() or None


def _manifest_path(row: dict[str, str], modality: str, manifest: Path, line: int) -> Path | None:
    cell = (row.get(modality) or "").strip()
    if not cell:
        return None
    path = Path(cell) if Path(cell).is_absolute() else manifest.parent / cell
    if not path.is_file():
        raise FileNotFoundError(
            f"{manifest}, line {line}: {modality} image {path} does not exist; fix the path (relative paths start "
            f"at the manifest's folder) or leave the cell empty"
        )
    return path


def read_csv_rows(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV as ``(line number, {column: cell})``: headers stripped, a UTF-8 BOM tolerated, blank rows
    skipped, a missing cell read as ``""`` and cells beyond the header dropped.

    Raises:
        ValueError: a required column is missing (naming the file, what it has and what it needs).
    """
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {header}, need at least {list(required)}")
        reader.fieldnames = header
        return [(reader.line_num, {k: v or "" for k, v in row.items() if k is not None})
                for row in reader if any((v or "").strip() for v in row.values() if isinstance(v, str))]


def _lesion_id(row: dict[str, str], path: Path, line: int) -> str:
    lesion_id = (row.get("lesion_id") or "").strip()
    if not lesion_id:
        raise ValueError(f"{path}, line {line}: empty lesion_id; every row needs the lesion's file name stem")
    return lesion_id


def _score(row: dict[str, str], path: Path, line: int) -> float | None:
    cell = (row.get("score") or "").strip()
    if not cell:
        return None
    try:
        score = float(cell)
    except ValueError:
        raise ValueError(f"{path}, line {line}: score {cell!r} is not a number; scores are in 0..1") from None
    if not 0.0 <= score <= 1.0:  # also rejects nan
        raise ValueError(
            f"{path}, line {line}: score {cell} is outside [0, 1]; rescale the labels (e.g. divide a 0-100 scale "
            f"by 100) or fix the row"
        )
    return score


def _report_skipped(index: DatasetIndex) -> None:
    for reason, ids in index.skipped.items():
        if ids:
            shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
            log.warning("%s: skipped %d lesion(s) with %s: %s", index.source, len(ids), reason.replace("_", " "), shown)


@dataclass(frozen=True)
class ScoringItem:
    """One lesion to score (no label needed): its files, or why it cannot be scored."""

    lesion_id: str
    files: dict[str, Path]  # modality -> image file, for the modalities it has
    error: str | None = None
    error_field: str = "clinical_image"  # the request field the error is about


def index_for_scoring(source: str | Path) -> list[ScoringItem]:
    """Every lesion of a dataset folder or manifest, labelled or not, in id order (folder) or row order (manifest).

    A lesion without a clinical image, or whose manifest row names a file that does not exist, is an item with an
    ``error`` (batch scoring answers it with an error row); an id given twice is an error for the whole source.
    """
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        rows = read_csv_rows(source, required=("lesion_id", "clinical"))
        cells = [(_lesion_id(row, source, line), {m: (row.get(m) or "").strip() for m in MODALITIES}, line)
                 for line, row in rows]
        items = [_manifest_item(lesion_id, files, source, line) for lesion_id, files, line in cells]
    elif source.is_dir():
        images = {m: find_images(source / m / "images") for m in MODALITIES}
        items = [ScoringItem(i, {m: images[m][i] for m in MODALITIES if i in images[m]},
                             None if i in images["clinical"] else "no clinical image (clinical/images/<id>.*)")
                 for i in sorted(set().union(*images.values()))]
    else:
        raise FileNotFoundError(f"{source}: no such dataset; pass a folder with clinical/images/ or a manifest .csv")
    seen: set[str] = set()
    for item in items:
        if item.lesion_id in seen:
            raise ValueError(f"{source}: lesion_id {item.lesion_id!r} appears twice; keep one row per lesion")
        seen.add(item.lesion_id)
    if not items:
        raise ValueError(f"{source}: no lesions found")
    return items


def _manifest_item(lesion_id: str, cells: dict[str, str], manifest: Path, line: int) -> ScoringItem:
    files = {m: Path(c) if Path(c).is_absolute() else manifest.parent / c for m, c in cells.items() if c}
    if "clinical" not in files:
        return ScoringItem(lesion_id, files, f"{manifest.name}, line {line}: no clinical image")
    missing = [m for m, p in files.items() if not p.is_file()]
    if missing:
        return ScoringItem(lesion_id, files, f"{manifest.name}, line {line}: {missing[0]} image {files[missing[0]]} "
                                             f"does not exist", f"{missing[0]}_image")
    return ScoringItem(lesion_id, files)


# ---------------------------------------------------------------------------------------------------------------
# Patient-level split
# ---------------------------------------------------------------------------------------------------------------


def split_by_patient(lesions: list[Lesion], val_fraction: float = 0.2,
                     seed: int = 0) -> tuple[list[Lesion], list[Lesion]]:
    """Seeded train/val split with no patient on both sides; val gets about ``val_fraction`` of the lesions.

    Patients are shuffled (independently of the lesion order on disk) and assigned to validation until it holds
    its share. With a single patient there is nothing to split: an error says so.
    """
    patients = sorted({lesion.patient_id for lesion in lesions})
    if len(patients) < 2:
        raise ValueError(f"all {len(lesions)} lesions belong to one patient; a patient-level split needs at least two")
    generator = torch.Generator().manual_seed(seed)
    order = [patients[i] for i in torch.randperm(len(patients), generator=generator).tolist()]
    sizes = {p: 0 for p in patients}
    for lesion in lesions:
        sizes[lesion.patient_id] += 1
    target = max(1, round(val_fraction * len(lesions)))
    val_patients: set[str] = set()
    count = 0
    for patient in order[:-1]:  # the last patient always stays in training, so training is never empty
        if count >= target:
            break
        val_patients.add(patient)
        count += sizes[patient]
    train = [x for x in lesions if x.patient_id not in val_patients]
    val = [x for x in lesions if x.patient_id in val_patients]
    return train, val


def split_from_manifest(lesions: list[Lesion]) -> dict[str, list[Lesion]] | None:
    """``{"train", "val", "test": lesions}`` from a manifest's ``split`` column, or None when the column is empty.

    A split given for some lesions only is an error (a lesion without one would be silently left out or silently
    trained on). Test lesions are never trained or validated on; ``evaluate --split test`` scores them.
    """
    given = [x for x in lesions if x.split is not None]
    if not given:
        return None
    if len(given) != len(lesions):
        missing = [x.lesion_id for x in lesions if x.split is None]
        raise ValueError(f"{len(missing)} lesion(s) have no split (e.g. {missing[:5]}) while others do; fill the "
                         f"split column for every row ({', '.join(SPLITS)}) or for none")
    parts = {name: [x for x in lesions if x.split == name] for name in SPLITS}
    if not parts["train"] or not parts["val"]:
        raise ValueError(f"the manifest's split has {len(parts['train'])} train and {len(parts['val'])} val "
                         f"lesions; both need at least one")
    return parts


def select(lesions: list[Lesion], lesion_ids: list[str], source: str = "data") -> list[Lesion]:
    """The lesions with the given ids, in that order; ids not in ``lesions`` are an error naming a few."""
    by_id = {lesion.lesion_id: lesion for lesion in lesions}
    missing = [i for i in lesion_ids if i not in by_id]
    if missing:
        raise ValueError(
            f"{len(missing)} lesion(s) of the checkpoint's split are not in {source} (e.g. {missing[:5]}); "
            f"pass the data the model was trained on"
        )
    return [by_id[i] for i in lesion_ids]


# ---------------------------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------------------------


def available_modalities(lesion: Lesion, data_cfg: DataConfig) -> dict[str, str]:
    """``{modality: "file" | "simulated"}`` for the views this lesion provides under ``data_cfg``."""
    found = {m: "file" for m in MODALITIES if lesion.path(m) is not None}
    if "multispectral" not in found and data_cfg.simulate_multispectral:
        found["multispectral"] = "simulated"
    return found


def lesion_sample(lesion: Lesion, data_cfg: DataConfig) -> Sample:
    """The lesion's files prepared by the one scoring path, simulating multispectral when the config says so."""
    paths = {m: lesion.path(m) for m in MODALITIES}
    return prepare_files(paths, data_cfg, simulate_multispectral=data_cfg.simulate_multispectral)


def lesion_tensors(lesion: Lesion, data_cfg: DataConfig) -> dict[str, Tensor]:
    """Eval tensors ``[3, S, S]`` for every modality (zeros where absent) and ``aux_mask [2]`` bool.

    The lesion is prepared by the one scoring path (``model.scoring.prepare_files``), so each tensor equals what
    the server computes for the same file. A missing multispectral view is simulated from the dermoscopy (else
    clinical) photo when the config says so. Unreadable files raise :class:`model.preprocessing.InputError`
    naming the file.
    """
    clinical, dermoscopy, multispectral, aux_mask = collate([lesion_sample(lesion, data_cfg)])
    zeros = torch.zeros_like(clinical[0])
    views = {"clinical": clinical, "dermoscopy": dermoscopy, "multispectral": multispectral}
    out = {m: zeros if t is None else t[0] for m, t in views.items()}
    out["aux_mask"] = aux_mask[0]
    return out


@dataclass(frozen=True)
class Augmentation:
    """Random training ops on the eval tensors (the ``training`` config keys of the same names).

    Attributes:
        symmetries: a random element of the square's symmetry group (90-degree rotations, flip): exact, no
            resampling, and the same draw for every modality.
        rotation_degrees: a further rotation by an angle uniform in +-this, same draw for every modality.
        crop_scale: zoom crops whose side is uniform in [crop_scale, 1] of the image, placed uniformly inside it
            (same draw for every modality); 1 is off. Near 1, a lesion in the central part of the frame stays in
            view; the dermoscopy's area fraction (part of the score) is relative to the frame, so keep it mild.
        color_jitter: ``{modality: strength}``, an independent draw per modality: a global gain in
            1 +- strength, a red/blue cast of +-strength/3 and an illumination gradient of up to strength across
            the image (RGB views); gains on saturation and lightness (multispectral). Gains scale lesion and skin
            alike, so the relative darkness the score depends on survives.
        clinical_crop_scale: zoom crops of the clinical photo alone, side uniform in [this, 1]; 1 is off. The
            clinical framing carries no part of the score (the area is the dermoscopy's), so unlike
            ``crop_scale`` this is label-preserving; it widens the range of lesion sizes the clinical encoder sees.
        noise: Gaussian sensor noise added to every present view, its std uniform in [0, noise] 8-bit levels
            (one draw per view, clipped as a camera would); 0 is off.
    """

    symmetries: bool = True
    rotation_degrees: float = 0.0
    crop_scale: float = 1.0
    color_jitter: dict[str, float] = field(default_factory=dict)
    clinical_crop_scale: float = 1.0
    noise: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.rotation_degrees <= 180.0:
            raise ValueError(f"training.rotation_degrees must be in [0, 180], got {self.rotation_degrees}")
        if not 0.25 <= self.crop_scale <= 1.0:
            raise ValueError(f"training.crop_scale must be in [0.25, 1] (1 = no crops), got {self.crop_scale}")
        if not 0.25 <= self.clinical_crop_scale <= 1.0:
            raise ValueError(f"training.clinical_crop_scale must be in [0.25, 1] (1 = no crops), got "
                             f"{self.clinical_crop_scale}")
        if not 0.0 <= self.noise <= 64.0:
            raise ValueError(f"training.noise must be in [0, 64] 8-bit levels (0 = off), got {self.noise}")
        for name, strength in self.color_jitter.items():
            if name not in MODALITIES:
                raise ValueError(f"training.color_jitter: unknown modality {name!r}; expected some of {MODALITIES}")
            if not 0.0 <= float(strength) < 1.0:
                raise ValueError(f"training.color_jitter.{name} must be in [0, 1), got {strength}")

    @property
    def resamples(self) -> bool:
        """Whether the geometric part needs interpolation (small rotations or crops)."""
        return self.rotation_degrees > 0 or self.crop_scale < 1.0


NO_AUGMENTATION = Augmentation(symmetries=False)


class LesionDataset(Dataset):
    """Per sample: ``lesion_id``, ``clinical``/``dermoscopy``/``multispectral`` ``[3, S, S]`` (zeros if absent),
    ``aux_mask [2]`` bool (dermoscopy, multispectral present) and ``score`` (float32 scalar).

    Args:
        lesions: the lesions to serve, in order.
        data_cfg: preprocessing (image size, normalization, multispectral simulation).
        train: apply augmentation and modality dropout; False gives the exact eval tensors.
        augment: with ``train``, an :class:`Augmentation`; True means the exact symmetries only, False none.
        modality_dropout: with ``train``, probability of dropping each auxiliary modality (clinical never).
        cache: keep each lesion's eval tensors after the first decode (memory: 3 x 3 x S x S x 4 bytes per lesion).
    """

    def __init__(self, lesions: list[Lesion], data_cfg: DataConfig, train: bool,
                 augment: bool | Augmentation = True, modality_dropout: float = 0.0, cache: bool = False):
        self.lesions = list(lesions)
        self.data_cfg = data_cfg
        self.train = train
        if not isinstance(augment, Augmentation):
            augment = Augmentation() if augment else NO_AUGMENTATION
        self.augmentation = augment if train else NO_AUGMENTATION
        self.modality_dropout = modality_dropout if train else 0.0
        self.cache: dict[int, dict[str, Tensor]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.lesions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        lesion = self.lesions[i]
        sample = dict(self._eval_tensors(i))
        if self.augmentation != NO_AUGMENTATION:
            sample.update(augment_sample(sample, self.augmentation, self.data_cfg))
        if self.modality_dropout > 0:
            sample.update(drop_modalities(sample, self.modality_dropout))
        return {"lesion_id": lesion.lesion_id, **sample, "score": torch.tensor(lesion.score, dtype=torch.float32)}

    def preload(self, skip_bad_images: bool = False) -> list[str]:
        """Decode every lesion now (filling the cache). Bad images raise, or with ``skip_bad_images`` the lesion
        is removed and its id returned (and logged) so callers can count it."""
        bad: list[str] = []
        keep: list[Lesion] = []
        cached: dict[int, dict[str, Tensor]] = {}
        for i, lesion in enumerate(self.lesions):
            try:
                tensors = lesion_tensors(lesion, self.data_cfg)
            except (InputError, OSError) as exc:
                if not skip_bad_images:
                    raise InputError(getattr(exc, "field", str(lesion.clinical)),
                                     f"{getattr(exc, 'problem', exc)}; fix or remove the file, or set "
                                     f"data.skip_bad_images=true to skip such lesions") from exc
                log.warning("skipping lesion %s: %s", lesion.lesion_id, exc)
                bad.append(lesion.lesion_id)
                continue
            if self.cache is not None:
                cached[len(keep)] = tensors
            keep.append(lesion)
        self.lesions = keep
        if self.cache is not None:
            self.cache = cached
        return bad

    def _eval_tensors(self, i: int) -> dict[str, Tensor]:
        if self.cache is None:
            return lesion_tensors(self.lesions[i], self.data_cfg)
        if i not in self.cache:
            self.cache[i] = lesion_tensors(self.lesions[i], self.data_cfg)
        return self.cache[i]


def augment_sample(sample: dict[str, Tensor], aug: Augmentation, data_cfg: DataConfig,
                   generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """The augmented images of one sample (``{modality: [3, S, S]}`` eval tensors plus ``aux_mask``).

    Geometric ops first, one draw shared by every modality; then colour jitter, drawn per present modality (an
    absent modality's zeros stay zeros).
    """
    images = {m: sample[m] for m in MODALITIES}
    if aug.symmetries:
        images = augment_paired(images, generator)
    if aug.resamples:
        images = affine_paired(images, aug.rotation_degrees, aug.crop_scale, generator)
    if aug.clinical_crop_scale < 1.0:
        images["clinical"] = affine_paired({"clinical": images["clinical"]}, 0.0, aug.clinical_crop_scale,
                                           generator)["clinical"]
    present = {"clinical": True, **{m: bool(sample["aux_mask"][i]) for i, m in enumerate(AUX_MODALITIES)}}
    for name, strength in aug.color_jitter.items():
        if strength > 0 and present[name]:
            images[name] = color_jitter(images[name], name, float(strength), data_cfg, generator)
    if aug.noise > 0:
        for name in [m for m in MODALITIES if present[m]]:
            images[name] = sensor_noise(images[name], name, aug.noise, data_cfg, generator)
    return images


def sensor_noise(image: Tensor, modality: str, max_std: float, data_cfg: DataConfig,
                 generator: torch.Generator | None = None) -> Tensor:
    """One view's normalized ``[3, S, S]`` tensor plus Gaussian noise of std uniform in [0, ``max_std``] 8-bit levels
    in its own [0, 1] space, clipped to [0, 1] and normalized back."""
    multispectral = modality == "multispectral"
    mean = torch.tensor(data_cfg.ms_mean if multispectral else data_cfg.mean).view(3, 1, 1)
    std = torch.tensor(data_cfg.ms_std if multispectral else data_cfg.std).view(3, 1, 1)
    level = float(torch.empty(1).uniform_(0.0, max_std, generator=generator)) / 255.0
    raw = image * std + mean + level * torch.randn(image.shape, generator=generator)
    return (raw.clamp(0.0, 1.0) - mean) / std


def affine_paired(images: dict[str, Tensor], rotation_degrees: float, crop_scale: float,
                  generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Rotate by a random angle in +-``rotation_degrees`` and zoom into a random square crop of side
    [``crop_scale``, 1] (placed inside the image), identically for every ``[3, S, S]`` image; the output keeps
    the size. Bilinear, with reflected borders, so rotated corners show mirrored skin rather than a fill colour."""
    angle = math.radians(float(torch.empty(1).uniform_(-rotation_degrees, rotation_degrees, generator=generator)))
    side = float(torch.empty(1).uniform_(crop_scale, 1.0, generator=generator))
    shift = (torch.rand(2, generator=generator) * 2 - 1) * (1 - side)  # crop centre, normalized coordinates
    cos, sin = math.cos(angle) * side, math.sin(angle) * side
    theta = torch.tensor([[cos, -sin, float(shift[0])], [sin, cos, float(shift[1])]], dtype=torch.float32)
    names = list(images)
    stack = torch.stack([images[m] for m in names])  # [M, 3, S, S]
    grid = F.affine_grid(theta.expand(len(names), 2, 3), list(stack.shape), align_corners=False)
    warped = F.grid_sample(stack, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return dict(zip(names, warped, strict=True))


def color_jitter(image: Tensor, modality: str, strength: float, data_cfg: DataConfig,
                 generator: torch.Generator | None = None) -> Tensor:
    """One modality's normalized ``[3, S, S]`` tensor under a random capture change (see :class:`Augmentation`).

    Works in the tensor's own [0, 1] space (RGB, or hue/saturation/lightness for multispectral) and normalizes
    back with the data config's statistics, clipping as a camera would.
    """
    multispectral = modality == "multispectral"
    mean = torch.tensor(data_cfg.ms_mean if multispectral else data_cfg.mean).view(3, 1, 1)
    std = torch.tensor(data_cfg.ms_std if multispectral else data_cfg.std).view(3, 1, 1)
    raw = image * std + mean

    def uniform(low: float, high: float, n: int = 1) -> Tensor:
        return torch.empty(n).uniform_(low, high, generator=generator)

    if multispectral:  # hue is an angle and a camera does not move it much; leave it
        gains = torch.cat([torch.ones(1), uniform(1 - strength, 1 + strength, 2)]).view(3, 1, 1)
        raw = raw * gains
    else:
        cast = float(uniform(-strength / 3, strength / 3))
        gains = float(uniform(1 - strength, 1 + strength)) * torch.tensor([1 + cast, 1.0, 1 - cast]).view(3, 1, 1)
        size = image.shape[-1]
        coords = torch.linspace(-1.0, 1.0, size)
        direction = float(uniform(0.0, 2 * math.pi))
        ramp = coords.view(1, size) * math.cos(direction) + coords.view(size, 1) * math.sin(direction)
        light = 1.0 + float(uniform(0.0, strength)) * ramp / 2  # [S, S], 1 +- strength/2 at the edges
        raw = raw * gains * light
    return (raw.clamp(0.0, 1.0) - mean) / std


def augment_paired(images: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """One random element of the square's symmetry group (rotation by k x 90 degrees, optional horizontal flip),
    applied identically to every ``[3, S, S]`` image so paired modalities stay aligned. Exact: no resampling."""
    k = int(torch.randint(4, (1,), generator=generator))
    flip = bool(torch.randint(2, (1,), generator=generator))
    out = {}
    for name, img in images.items():
        img = torch.rot90(img, k, dims=(1, 2))
        out[name] = img.flip(2) if flip else img
    return out


def drop_modalities(sample: dict[str, Tensor], p: float, generator: torch.Generator | None = None) -> dict[str, Any]:
    """Drop each present auxiliary modality with probability ``p``: clear its ``aux_mask`` bit, zero its image."""
    drop = torch.rand(len(AUX_MODALITIES), generator=generator) < p
    mask = sample["aux_mask"] & ~drop
    out: dict[str, Any] = {"aux_mask": mask}
    for i, name in enumerate(AUX_MODALITIES):
        if sample["aux_mask"][i] and not mask[i]:
            out[name] = torch.zeros_like(sample[name])
    return out
