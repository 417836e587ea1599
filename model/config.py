"""Frozen configuration dataclasses and their strict loader.

Configs come from YAML, where types are loose (PyYAML reads ``3e-4`` as a string, lists for tuples), so every
dataclass is built through :func:`from_dict`, which rejects unknown keys with the list of valid ones and coerces
values to the annotated type. The same dataclasses, as plain dicts, travel inside the checkpoint.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

MODALITIES: tuple[str, ...] = ("clinical", "dermoscopy", "multispectral")
AUX_MODALITIES: tuple[str, ...] = MODALITIES[1:]
"""Auxiliary modalities, in the order of the fusion model's key/value tokens."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of :class:`model.fusion_model.FusionModel`.

    ``backbone_kwargs`` go straight to ``timm.create_model`` and shrink the Swin for tests and the demo
    (e.g. ``embed_dim``, ``depths``, ``num_heads``, ``window_size``); the image size is not here but in
    :class:`DataConfig`, the one source of size and normalization.
    """

    backbone: str = "swin_tiny_patch4_window7_224"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    pretrained_file: str | None = None
    attention_heads: int = 8
    head_hidden: tuple[int, ...] = (256, 64)
    dropout: float = 0.3


@dataclass(frozen=True)
class DataConfig:
    """How an image file becomes the model's tensor, for every modality (see ``model.preprocessing``).

    ``ms_mean``/``ms_std`` normalize the pseudo-multispectral (H, S, L) view, whose channels are each scaled to
    [0, 1] first; ImageNet statistics describe RGB photos and do not fit those channels. ``jpeg_draft`` is part
    of the decode policy, so training and serving use the same one. ``color_constancy`` is the Minkowski norm ``p``
    of shades-of-grey colour constancy applied before normalization to the views in ``color_constancy_views``
    (0 = off; see :func:`model.preprocessing.shades_of_grey`): it divides out a capture's global gain and colour cast.
    """

    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    ms_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    ms_std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    simulate_multispectral: bool = True
    jpeg_draft: bool = True
    """Decode JPEGs at a reduced DCT scale close to ``image_size`` (much faster for phone photos)."""
    color_constancy: float = 0.0
    color_constancy_views: tuple[str, ...] = MODALITIES
    """The modalities ``color_constancy`` applies to (a simulated multispectral view counts as multispectral)."""

    def __post_init__(self) -> None:
        if self.color_constancy != 0 and not 1.0 <= self.color_constancy <= 16.0:
            raise ValueError(f"data.color_constancy is a Minkowski norm p in [1, 16] (1 = grey world, 6 = shades of "
                             f"grey) or 0 for off, got {self.color_constancy}")
        unknown = sorted(set(self.color_constancy_views) - set(MODALITIES))
        if unknown:
            raise ValueError(f"data.color_constancy_views: unknown modality {unknown[0]!r}; expected some of "
                             f"{MODALITIES}")


@dataclass(frozen=True)
class SeverityConfig:
    """Score bands: Mild [0, mild_max], Moderate (mild_max, moderate_max], Severe (moderate_max, 1]."""

    mild_max: float = 0.25
    moderate_max: float = 0.60

    def __post_init__(self) -> None:
        if not 0.0 < self.mild_max < self.moderate_max < 1.0:
            raise ValueError(
                f"severity thresholds must satisfy 0 < mild_max < moderate_max < 1, got "
                f"mild_max={self.mild_max}, moderate_max={self.moderate_max}"
            )


T = TypeVar("T")


class ConfigError(TypeError, ValueError):
    """A config value of the wrong type. A ``TypeError`` for callers that catch that, and a ``ValueError`` so that
    the command-line tools (``model.cli``) report it as the user's mistake it is rather than as a bug."""


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data`` strictly: unknown keys are an error, values are coerced.

    Args:
        cls: a dataclass type.
        data: mapping of field name to value; missing fields take their defaults. ``None`` means all defaults.
        where: dotted prefix used in error messages (e.g. ``"training"``).
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(_dotted(where, k) for k in unknown)}; valid keys are: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    values = {name: _coerce(value, hints[name], _dotted(where, name)) for name, value in data.items()}
    return cls(**values)


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass -> plain dict of builtins (tuples become lists), safe for YAML and ``weights_only`` loading."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {k: plain(v) for k, v in dataclasses.asdict(obj).items()}


def _dotted(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Coerce a YAML/CLI value to the annotated type, or raise naming the key, the value and the expected type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, name)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise ConfigError("; ".join(errors))
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        item_types = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(item_types) != len(value):
            raise ValueError(f"{name}: expected {len(item_types)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(v, t, f"{name}[{i}]") for i, (v, t) in enumerate(zip(value, item_types)))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.strip().lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        try:
            return float(value)  # PyYAML reads 3e-4 as the string "3e-4"
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if hint is str:
        if isinstance(value, (dict, list, tuple)):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"{name}: unsupported annotation {hint!r}")
