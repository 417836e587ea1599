"""The run configuration: one YAML file with sections ``model``, ``data``, ``severity``, ``training``, ``device``.

Loading is strict, like everything built on :func:`model.config.from_dict`: an unknown section or key is an error
that lists the valid ones, and values are coerced to the annotated type (PyYAML reads ``3e-4`` as a string).
``--set section.key=value`` overrides are parsed with ``yaml.safe_load``, so ``--set model.head_hidden=[64,32]``
and ``--set training.learning_rate=3e-4`` both work; deeper keys reach into mappings
(``--set model.backbone_kwargs.embed_dim=48``).

The ``data`` section holds two kinds of keys: how an image becomes a tensor (:class:`model.config.DataConfig`,
which travels in the checkpoint because serving needs it) and how training reads a dataset
(:class:`DataOptions`, which serving never needs). They share the section because users think of both as "data".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from model.config import ConfigError, DataConfig, ModelConfig, SeverityConfig, from_dict, to_dict


@dataclass(frozen=True)
class DataOptions:
    """Training-side dataset options (YAML section ``data``, next to :class:`model.config.DataConfig`'s keys)."""

    val_fraction: float = 0.2  # share of lesions in validation; the split is by patient
    split_seed: int = 0  # the patient split depends only on this and the data, not on training.seed
    calibration_fraction: float = 0.0  # share of lesions (by patient, taken from training) kept for the interval
    # and OOD thresholds only; 0: calibrate on the validation lesions, which also chose the checkpoint, so the
    # interval can under-cover (docs/trust.md)
    skip_bad_images: bool = False  # true: skip (warn, count) lesions with unreadable images instead of failing
    cache_images: bool = False  # true: decode each lesion once and keep its tensors in memory (fast epochs)

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")
        if not 0.0 <= self.calibration_fraction < 1.0 - self.val_fraction:
            raise ValueError(f"data.calibration_fraction must be in [0, 1 - val_fraction), got "
                             f"{self.calibration_fraction}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimization (YAML section ``training``). Defaults are the design's."""

    batch_size: int = 8
    epochs: int = 10
    learning_rate: float = 1.0e-4
    weight_decay: float = 1.0e-4
    lr_schedule: str = "constant"  # "constant" (the design) or "cosine" (decays to 0 over the epochs, per epoch)
    warmup_epochs: int = 0  # linear warm-up from learning_rate / (warmup_epochs + 1)
    encoder_lr_scale: float = 1.0  # the encoders train at learning_rate x this (< 1: fine-tune pretrained ones gently)
    early_stopping_patience: int = 0  # stop after this many epochs without a lower val_loss; 0: never
    grad_clip: float | None = None  # max gradient norm; None: no clipping
    modality_dropout: float = 0.0  # probability of dropping each auxiliary modality of a training sample
    augment: bool = True  # random flips and 90-degree rotations, the same draw for every modality of a sample
    rotation_degrees: float = 0.0  # with augment: a further rotation in +-this (same draw for every modality)
    crop_scale: float = 1.0  # with augment: zoom crops of side [crop_scale, 1] (same draw for every modality)
    color_jitter: dict[str, float] = dataclasses.field(default_factory=dict)  # with augment: {modality: strength}
    clinical_crop_scale: float = 1.0  # with augment: zoom crops of side [this, 1] of the clinical photo alone
    noise: float = 0.0  # with augment: Gaussian sensor noise, std uniform in [0, this] 8-bit levels, per view
    num_workers: int = 4
    seed: int = 0
    amp: bool = True  # mixed precision on CUDA (fp16 with loss scaling)
    cpu_precision: str = "auto"  # CPU: "auto" (bf16 autocast where the CPU has AVX-512 bf16/AMX), "fp32", "bf16"
    channels_last: bool = False  # NHWC images and conv weights (only Swin's patch embedding is a convolution)
    threads: int = 0  # CPU threads for torch; 0: model.cpu.threads_per_worker (the cores / processes per node)

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"training.lr_schedule={self.lr_schedule!r}; expected one of {LR_SCHEDULES}")
        if self.cpu_precision not in CPU_PRECISIONS:
            raise ValueError(f"training.cpu_precision={self.cpu_precision!r}; expected one of {CPU_PRECISIONS}")
        if not 0.0 <= self.encoder_lr_scale <= 1.0:
            raise ValueError(f"training.encoder_lr_scale must be in [0, 1], got {self.encoder_lr_scale}")
        if self.early_stopping_patience < 0:
            raise ValueError(f"training.early_stopping_patience must be >= 0 (0 = off), got "
                             f"{self.early_stopping_patience}")
        if not 0.0 <= self.modality_dropout <= 1.0:
            raise ValueError(f"training.modality_dropout must be in [0, 1], got {self.modality_dropout}")
        for name in ("batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"training.{name} must be at least 1, got {getattr(self, name)}")


LR_SCHEDULES = ("constant", "cosine")
CPU_PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class DeviceConfig:
    """Where to train (YAML section ``device``). ``use_gpu`` falls back to the CPU, with a warning, without CUDA."""

    use_gpu: bool = True


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig
    data: DataConfig
    data_options: DataOptions
    severity: SeverityConfig
    training: TrainConfig
    device: DeviceConfig

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The YAML layout: the same sections as the input file, with every default filled in."""
        return {
            "model": to_dict(self.model),
            "data": {**to_dict(self.data), **to_dict(self.data_options)},
            "severity": to_dict(self.severity),
            "training": to_dict(self.training),
            "device": to_dict(self.device),
        }


SECTIONS: dict[str, tuple[type, ...]] = {
    "model": (ModelConfig,),
    "data": (DataConfig, DataOptions),
    "severity": (SeverityConfig,),
    "training": (TrainConfig,),
    "device": (DeviceConfig,),
}


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read the YAML at ``path`` (None: all defaults), apply ``section.key=value`` overrides, validate strictly."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such config file; see training/configs/ for examples")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:  # a user's typo: a ValueError, so the CLIs report it in one line
            raise ValueError(f"{path}: not valid YAML ({exc}); fix the file (see training/configs/)") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping of sections {list(SECTIONS)}, got {type(raw).__name__}")
    for item in overrides:
        apply_override(raw, item)
    return config_from_dict(raw)


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """Strictly build a :class:`RunConfig` from the YAML layout."""
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}; valid sections are: {', '.join(SECTIONS)}")
    sections = {name: raw.get(name) or {} for name in SECTIONS}
    for name, value in sections.items():
        if not isinstance(value, dict):
            raise ConfigError(f"config section {name!r} must be a mapping of keys, got {value!r}")
    data_cfg, data_options = _split_data_section(sections["data"])
    return RunConfig(
        model=from_dict(ModelConfig, sections["model"], "model"),
        data=data_cfg,
        data_options=data_options,
        severity=from_dict(SeverityConfig, sections["severity"], "severity"),
        training=from_dict(TrainConfig, sections["training"], "training"),
        device=from_dict(DeviceConfig, sections["device"], "device"),
    )


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``section.key[.subkey]=value`` override to the raw YAML mapping, in place."""
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise ValueError(f"--set {item!r}: expected section.key=value, e.g. --set training.learning_rate=3e-4")
    if parts[0] not in SECTIONS:
        raise ValueError(f"--set {item!r}: unknown section {parts[0]!r}; valid sections are: {', '.join(SECTIONS)}")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ValueError(f"--set {item!r}: {part!r} is not a mapping (it is {child!r})")
        node = child
    node[parts[-1]] = yaml.safe_load(text) if text.strip() else None


def save_config(cfg: RunConfig, path: str | Path) -> Path:
    """Write the resolved config (every default filled in) as YAML; ``load_config`` reads it back unchanged."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return path


def _split_data_section(section: dict[str, Any]) -> tuple[DataConfig, DataOptions]:
    """Route each ``data`` key to the dataclass that owns it; a key neither owns is an error listing both."""
    owners = {f.name: cls for cls in SECTIONS["data"] for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - set(owners))
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join('data.' + k for k in unknown)}; valid keys are: {', '.join(owners)}"
        )
    parts = {cls: {k: v for k, v in section.items() if owners[k] is cls} for cls in SECTIONS["data"]}
    return from_dict(DataConfig, parts[DataConfig], "data"), from_dict(DataOptions, parts[DataOptions], "data")
