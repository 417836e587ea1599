"""The one path that scores a lesion: encoded images -> tensors -> model -> answer.

The server (``handler.predictor``), ``training.infer_single``, ``training.evaluate``, batch scoring and the
dataset's inference-time loading (``training.data.lesion_tensors``) all go through these functions, so "served
equals offline" holds by construction rather than by a test of two copies:

* :func:`prepare` / :func:`prepare_files`: each image decoded once with the checkpoint's decode policy
  (``model.preprocessing``), turned into the model tensor of its modality, and, when asked, the missing
  multispectral view simulated by the one rule (:func:`model.preprocessing.simulation_source`);
* :func:`forward`: any mix of modality subsets in one batched forward (absent rows are zeros, ``aux_mask`` marks
  them), so each sample's score equals its score computed alone;
* :func:`forward_all`: the same, also returning each encoder's feature and which modalities each sample used;
* :func:`assess`: how far to trust each score (``model.trust``: interval, band probabilities, OOD flag) and
  :func:`quality_warnings` (``model.quality``, on the decoded photos actually sent, not on simulated views);
* :func:`answer`: the answer dict (``model.answer.format_answer``).

Augmentation and sampling are training's business and stay in ``training/``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from PIL import Image
from torch import Tensor, nn

from model import quality
from model.answer import format_answer
from model.checkpoint import LoadedModel
from model.config import AUX_MODALITIES, MODALITIES, DataConfig
from model.preprocessing import (
    DEFAULT_LIMITS,
    ImageLimits,
    InputError,
    decode_for_model,
    image_to_tensor,
    simulation_source,
)


@dataclass
class Sample:
    """One lesion, preprocessed: ``images`` maps modality -> ``[3, S, S]`` for every view the model uses."""

    images: dict[str, Tensor]
    simulated: tuple[str, ...] = ()
    sources: dict[str, bytes] = field(default_factory=dict, repr=False)
    """Modality -> the encoded bytes its view came from (a simulated view: its source photo), for overlays."""
    decoded: dict[str, Image.Image] = field(default_factory=dict, repr=False)
    """Modality -> a small copy of the decoded photo its view came from (``model.quality.reduced``), for the
    image-quality checks."""
    reports: dict[str, quality.QualityReport] = field(default_factory=dict, repr=False)
    """Modality -> the quality report of each view the user sent, filled on first use (:func:`quality_reports`)."""

    @property
    def modalities(self) -> list[str]:
        return [m for m in MODALITIES if m in self.images]

    @property
    def subset(self) -> str:
        """E.g. ``"clinical+dermoscopy"``: the metric dimension for requests per modality subset."""
        return "+".join(self.modalities)


def prepare(sources: Mapping[str, bytes], cfg: DataConfig, limits: ImageLimits = DEFAULT_LIMITS,
            simulate_multispectral: bool = False, names: Mapping[str, str] | None = None) -> Sample:
    """``{modality: encoded image bytes}`` -> :class:`Sample`.

    ``names`` maps modality -> what errors call the image (a request field, a file path); default the modality.

    Raises:
        InputError: no clinical image, an unknown modality, or an image that cannot be decoded (naming it).
    """
    names = dict(names or {})
    unknown = sorted(set(sources) - set(MODALITIES))
    if unknown:
        raise ValueError(f"unknown modality {unknown[0]!r}; expected one of {MODALITIES}")
    if "clinical" not in sources:
        raise InputError(names.get("clinical", "clinical"),
                         "is required (the clinical photo); dermoscopy and multispectral are optional")
    simulate = simulate_multispectral and "multispectral" not in sources
    origin = simulation_source(sources) if simulate else None
    images: dict[str, Tensor] = {}
    decoded: dict[str, Image.Image] = {}
    # One image at a time: its full-size pixels are dropped before the next is decoded, so a request costs one
    # decoded photo of memory at a time, not three (only the quality checks' small copy is kept).
    for m in [m for m in MODALITIES if m in sources]:
        img = decode_for_model(sources[m], names.get(m, m), cfg, limits)
        images[m] = image_to_tensor(img, m, cfg)
        if m == origin:
            images["multispectral"] = image_to_tensor(img, "multispectral", cfg)
        decoded[m] = quality.reduced(img)
        del img
    sources = dict(sources)
    simulated: tuple[str, ...] = ()
    if origin is not None:
        sources["multispectral"] = sources[origin]
        decoded["multispectral"] = decoded[origin]
        simulated = ("multispectral",)
    return Sample(images, simulated, sources, decoded)


def prepare_files(paths: Mapping[str, str | Path | None], cfg: DataConfig, limits: ImageLimits = DEFAULT_LIMITS,
                  simulate_multispectral: bool = False) -> Sample:
    """``{modality: image file or None}`` -> :class:`Sample`; errors name the file.

    Raises:
        InputError: a missing or unreadable file, or one that is not a supported image.
    """
    given = {m: Path(p) for m, p in paths.items() if p is not None}
    return prepare({m: read_file(p) for m, p in given.items()}, cfg, limits, simulate_multispectral,
                   names={m: str(p) for m, p in given.items()})


def read_file(path: Path) -> bytes:
    """A file's bytes, or an :class:`InputError` naming it (missing, a folder, unreadable)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(str(path), "no such file; check the path") from None
    except IsADirectoryError:
        raise InputError(str(path), "is a folder, not an image file") from None
    except OSError as exc:
        raise InputError(str(path), f"cannot be read ({exc.strerror or exc})") from None


def collate(samples: Sequence[Sample]) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor]:
    """Samples -> ``clinical [B, 3, S, S]``, ``dermoscopy``/``multispectral`` ``[B, 3, S, S]`` (zero rows where a
    sample lacks one; None when no sample has it) and ``aux_mask [B, 2]`` bool over ``AUX_MODALITIES``."""
    clinical = torch.stack([s.images["clinical"] for s in samples])
    zeros = torch.zeros_like(clinical[0])
    aux = [torch.stack([s.images.get(m, zeros) for s in samples]) if any(m in s.images for s in samples) else None
           for m in AUX_MODALITIES]
    aux_mask = torch.tensor([[m in s.images for m in AUX_MODALITIES] for s in samples], dtype=torch.bool)
    return clinical, aux[0], aux[1], aux_mask


class Forward(NamedTuple):
    """What one batched forward gives for each sample."""

    scores: Tensor  # [B] float32, CPU
    attention: Tensor  # [B, 3] over ATTENTION_TOKENS
    features: Tensor  # [B, len(MODALITIES), D] each encoder's pooled feature (zeros where not used)
    present: Tensor  # [B, len(MODALITIES)] bool: the modalities the sample was scored with


@torch.inference_mode()
def forward_all(model: nn.Module, samples: Sequence[Sample], device: str | torch.device = "cpu",
                aux_mask: Tensor | None = None) -> Forward:
    """Samples with any modality subsets -> :class:`Forward` (scores, attention, encoder features, modalities used).

    ``aux_mask [B, 2]`` (optional) hides auxiliary modalities a sample has (evaluation of modality subsets); it
    can only remove views, never add absent ones.
    """
    device = torch.device(device)
    clinical, dermoscopy, multispectral, present = collate(samples)
    mask = present if aux_mask is None else present & aux_mask.bool()
    out = model(*(_to_device(t, device) for t in (clinical, dermoscopy, multispectral, mask)))
    used = torch.cat([torch.ones(len(samples), 1, dtype=torch.bool), mask], dim=1)  # clinical always
    return Forward(out.score.float().cpu(), out.attention.float().cpu(), out.features.float().cpu(), used)


def forward(model: nn.Module, samples: Sequence[Sample], device: str | torch.device = "cpu",
            aux_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Samples with any modality subsets -> scores ``[B]`` and attention ``[B, 3]`` (float32, on the CPU)."""
    out = forward_all(model, samples, device, aux_mask)
    return out.scores, out.attention


def assess(loaded: LoadedModel, out: Forward, samples: Sequence[Sample],
           decimals: int | None = None) -> list[dict[str, Any]]:
    """The trust fields of each sample of one :func:`forward_all` of ``samples`` (``model.trust.Trust.assess``;
    the views' statistics are measured only when the checkpoint's OOD detector uses them)."""
    views = appearance(samples, out.present) if loaded.trust.uses_appearance else None
    return loaded.trust.assess(out.scores.tolist(), out.features, out.present, decimals, appearance=views)


def quality_reports(sample: Sample) -> dict[str, quality.QualityReport]:
    """``model.quality.check`` of each view the user sent (not of simulated ones), computed once per sample: the
    warnings and the out-of-distribution score's view statistics come from the same measurement."""
    for m, img in sample.decoded.items():
        if m not in sample.simulated and m not in sample.reports:
            sample.reports[m] = quality.check(img, m)
    return sample.reports


def quality_warnings(sample: Sample) -> list[dict[str, str]]:
    """Image-quality warnings of the views the user sent (a simulated view repeats its source photo's)."""
    return [{"modality": m, "warning": w} for m, report in quality_reports(sample).items() for w in report.warnings]


def appearance(samples: Sequence[Sample], used: Tensor) -> Tensor:
    """``[B, len(MODALITIES), len(quality.APPEARANCE)]`` float64: each view's statistics (``model.quality``), NaN
    where the sample did not send that view or it was not used (``used [B, M]`` bool, :attr:`Forward.present`)."""
    out = torch.full((len(samples), len(MODALITIES), len(quality.APPEARANCE)), math.nan, dtype=torch.float64)
    for i, sample in enumerate(samples):
        for m, report in quality_reports(sample).items():
            j = MODALITIES.index(m)
            if used[i, j]:
                out[i, j] = torch.tensor(report.appearance, dtype=torch.float64)
    return out


def answer(loaded: LoadedModel, sample: Sample, score: float, attention: Sequence[float],
           decimals: int | None = None, trust: Mapping[str, Any] | None = None,
           warnings: Sequence[Mapping[str, str]] | None = None) -> dict[str, Any]:
    """The answer for one scored sample (``model.answer.format_answer``); ``trust`` is one :func:`assess` entry,
    ``warnings`` its :func:`quality_warnings` (computed here when not given)."""
    return format_answer(score, attention, sample.modalities, sample.simulated, loaded.severity, loaded.version,
                         decimals=decimals, trust=trust,
                         quality_warnings=quality_warnings(sample) if warnings is None else warnings)


def score(loaded: LoadedModel, samples: Sequence[Sample], device: str | torch.device = "cpu",
          decimals: int | None = None) -> list[dict[str, Any]]:
    """Score samples in one batched forward -> one answer each, in order."""
    if not samples:
        return []
    out = forward_all(loaded.model, samples, device)
    trust = assess(loaded, out, samples, decimals)
    return [answer(loaded, s, float(out.scores[i]), out.attention[i].tolist(), decimals, trust[i])
            for i, s in enumerate(samples)]


def _to_device(tensor: Tensor | None, device: torch.device) -> Tensor | None:
    """CPU tensors stay; for a GPU, pinned memory lets the copy run asynchronously with the host's next step."""
    if tensor is None or device.type == "cpu":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)
