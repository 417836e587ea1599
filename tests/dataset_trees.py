"""Fixture trees in the exact layouts of Derm7pt's release_v0 and of an ISIC Archive download, with images drawn by
training.synth, and the facts a test expects of them written down as they are built (never read back from the
importer)."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import cv2

from training import synth
from training.import_data import DERM7PT_META_COLUMNS

ISIC_COLUMNS = (
    "isic_id", "attribution", "copyright_license", "age_approx", "anatom_site_general", "benign_malignant",
    "diagnosis_1", "fitzpatrick_skin_type", "image_type", "lesion_id", "patient_id", "sex",
)  # fmt: skip


@dataclass
class Expected:
    """What a correct import of a fixture tree gives."""

    lesions: dict[str, dict[str, str]] = field(default_factory=dict)  # lesion_id -> expected manifest cells
    problems: set[tuple[str, str]] = field(default_factory=set)  # (source_id, reason)
    splits: dict[str, str] = field(default_factory=dict)  # lesion_id -> train/val/test


def _synth_views(root: Path, n: int, seed: int) -> list[tuple[Path, Path]]:
    """(clinical JPEG, dermoscopy PNG) of ``n`` synthetic lesions, every one with dermoscopy."""
    data = synth.generate(root, n=n, seed=seed, clinical_size=(96, 72), dermoscopy_size=64, dermoscopy_fraction=1.0,
                          multispectral_fraction=0.0)
    ids = sorted(p.stem for p in (data / "clinical" / "images").glob("*.jpg"))
    return [(data / "clinical" / "images" / f"{i}.jpg", data / "dermoscopy" / "images" / f"{i}.png") for i in ids]


def _copy_as_jpeg(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(dst), cv2.imread(str(src)), [cv2.IMWRITE_JPEG_QUALITY, 92]), dst
    assert dst.suffix.lower() in (".jpg", ".jpeg")


def _write_csv(path: Path, columns, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def derm7pt_tree(root: Path, work: Path, n_good: int = 18) -> tuple[Path, Expected]:
    """``root/release_v0`` with meta.csv (all 19 columns), the three index files and images/<clinic>/... .

    Of the ``n_good`` usable cases, every third is written in another case than meta.csv spells it (``NEL025.JPG``
    on disk for ``Nel025.jpg``), and one lacks its dermoscopy file (used without it). Then five unusable cases:
    clinical file missing, clinic cell empty, clinical file unreadable, and one usable case in no index file. The
    good cases are split 60/20/20 over train/valid/test in a shuffled order, so positions are not contiguous.
    """
    release = root / "release_v0"
    views = _synth_views(work / "d7_synth", n_good + 2, seed=11)
    meta, expected = [], Expected()
    clinics = ["NEL", "Fal", "Gdl"]
    for i in range(n_good + 5):
        clinic_dir = clinics[i % 3]
        case_num, case_id = str(i + 1), f"{clinic_dir}{i + 1:03d}"
        clinic_cell, derm_cell = f"{clinic_dir}/{case_id}.jpg", f"{clinic_dir}/{case_id}d.jpg"
        row = {c: "" for c in DERM7PT_META_COLUMNS}
        row.update(case_num=case_num, diagnosis="clark nevus", seven_point_score="1", pigment_network="typical",
                   streaks="absent", pigmentation="absent", regression_structures="absent",
                   dots_and_globules="absent", blue_whitish_veil="absent", vascular_structures="absent",
                   level_of_diagnostic_difficulty="low", elevation="flat", location=["back", "abdomen", "acral"][i % 3],
                   sex="female", management="clinical follow up", clinic=clinic_cell, derm=derm_cell, case_id=case_id,
                   notes="")
        images = release / "images"
        clinical_src, derm_src = views[min(i, len(views) - 1)]
        disk_clinic = clinic_cell.upper() if i % 3 == 1 else clinic_cell  # NEL/NEL025.JPG for Nel025.jpg
        disk_derm = derm_cell.upper() if i % 3 == 1 else derm_cell
        if i < n_good:
            _copy_as_jpeg(clinical_src, images / disk_clinic)
            has_derm = i != 4
            if has_derm:
                _copy_as_jpeg(derm_src, images / disk_derm)
            else:
                expected.problems.add((case_num, "missing image"))
            expected.lesions[case_id] = {"patient_id": case_id, "source_id": case_num, "site": row["location"],
                                         "clinical": str(images / disk_clinic),
                                         "dermoscopy": str(images / disk_derm) if has_derm else ""}
        elif i == n_good:  # clinical file missing
            _copy_as_jpeg(derm_src, images / disk_derm)
            expected.problems.add((case_num, "missing image"))
        elif i == n_good + 1:  # no clinical photo at all
            row["clinic"] = ""
            expected.problems.add((case_num, "no clinical photo"))
        elif i == n_good + 2:  # unreadable clinical file
            (images / disk_clinic).parent.mkdir(parents=True, exist_ok=True)
            (images / disk_clinic).write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
            _copy_as_jpeg(derm_src, images / disk_derm)
            expected.problems.add((case_num, "unreadable image"))
        elif i == n_good + 3:  # fine images, but in no index file
            _copy_as_jpeg(clinical_src, images / disk_clinic)
            _copy_as_jpeg(derm_src, images / disk_derm)
            expected.problems.add((case_num, "not in the official split"))
        else:  # a second clinically usable case kept to show listed unusable rows do not shift positions
            _copy_as_jpeg(clinical_src, images / disk_clinic)
            _copy_as_jpeg(derm_src, images / disk_derm)
            expected.lesions[case_id] = {"patient_id": case_id, "source_id": case_num, "site": row["location"],
                                         "clinical": str(images / disk_clinic), "dermoscopy": str(images / disk_derm)}
        meta.append(row)
    _write_csv(release / "meta" / "meta.csv", DERM7PT_META_COLUMNS, meta)
    in_split = [i for i in range(len(meta)) if i != n_good + 3]
    order = sorted(in_split, key=lambda i: (i * 7) % len(meta))
    cut1, cut2 = round(0.6 * len(order)), round(0.8 * len(order))
    parts = {"train": order[:cut1], "valid": order[cut1:cut2], "test": order[cut2:]}
    for name, positions in parts.items():
        _write_csv(release / "meta" / f"{name}_indexes.csv", ["indexes"], [{"indexes": p} for p in positions])
        for p in positions:
            case_id = meta[p]["case_id"]
            if case_id in expected.lesions:
                expected.splits[case_id] = {"valid": "val"}.get(name, name)
    return release, expected


def isic_tree(root: Path, work: Path) -> tuple[Path, Expected]:
    """An ISIC download: metadata.csv with mixed image types, several images per lesion and per patient, images in
    MILK10k-style lesion folders with odd casing (``isic_0000003.JPG`` for ISIC_0000003), one image missing, one
    lesion with dermoscopy only, one ``TBP tile`` image, one image without a lesion id."""
    views = _synth_views(work / "isic_synth", 26, seed=12)
    rows, expected, k = [], Expected(), 0
    sites = ["anterior torso", "head/neck", "lower extremity"]

    def image(kind: str, lesion: str, patient: str, site: str, src: Path, odd_case: bool = False,
              present: bool = True) -> str:
        nonlocal k
        k += 1
        isic_id = f"ISIC_{k:07d}"
        name = f"{isic_id.lower()}.JPG" if odd_case else f"{isic_id}.jpg"
        if present:
            _copy_as_jpeg(src, root / "images" / (lesion or "no_lesion") / name)
        rows.append({"isic_id": isic_id, "attribution": "fixture", "copyright_license": "CC-BY",
                     "age_approx": "45", "anatom_site_general": site, "benign_malignant": "benign",
                     "diagnosis_1": "Benign", "fitzpatrick_skin_type": ["II", "IV", "VI"][k % 3],
                     "image_type": kind, "lesion_id": lesion, "patient_id": patient, "sex": "male"})
        return isic_id

    v = iter(views)
    for p in range(6):  # six patients with two lesions each
        patient = f"IP_{p:07d}"
        for q in range(2):
            lesion, site = f"IL_{p}{q}", sites[(p + q) % 3]
            clin_src, derm_src = next(v)
            derm = image("dermoscopic", lesion, patient, site, derm_src)
            overview = image("clinical: overview", lesion, patient, site, clin_src)
            close = image("clinical: close-up", lesion, patient, site, clin_src, odd_case=(p + q) % 2 == 0)
            expected.problems.add((overview, "extra image of the lesion"))
            chosen_derm = derm
            if q == 1:  # a second dermoscopic image: the first by isic_id is used
                extra = image("dermoscopic", lesion, patient, site, derm_src)
                expected.problems.add((extra, "extra image of the lesion"))
            expected.lesions[lesion] = {"patient_id": patient, "source_id": close, "site": site,
                                        "dermoscopy_id": chosen_derm, "clinical_id": close}
    clin_src, derm_src = next(v)
    lone = image("dermoscopic", "IL_lone", "IP_9999999", sites[0], derm_src)  # dermoscopy only
    expected.problems.add((lone, "no clinical photo"))
    tbp = image("TBP tile: close-up", "IL_00", "IP_0000000", sites[0], clin_src)
    expected.problems.add((tbp, "image type not used"))
    clin_src, derm_src = next(v)
    missing = image("clinical: close-up", "IL_gone", "IP_0000001", sites[1], clin_src, present=False)
    expected.problems.add((missing, "missing image"))
    gone_derm = image("dermoscopic", "IL_gone", "IP_0000001", sites[1], derm_src)
    expected.problems.add((gone_derm, "no clinical photo"))
    clin_src, _ = next(v)
    single = image("clinical: close-up", "", "IP_0000002", sites[2], clin_src)  # no lesion id: its own lesion
    expected.lesions[single] = {"patient_id": "IP_0000002", "source_id": single, "site": sites[2],
                                "dermoscopy_id": "", "clinical_id": single}
    _write_csv(root / "metadata.csv", ISIC_COLUMNS, rows)
    return root, expected
