"""Grad-CAM saliency for FusionModel: where, in each modality's image, the score came from.

For every modality given, the output of its encoder's last Swin stage (``encoders[m].backbone.layers[-1]``,
NHWC ``[1, h, w, C]``, before timm's final norm and pooling) is kept, and the score's gradient with respect to it
is taken. Grad-CAM (Selvaraju et al. 2017) weighs each channel by its spatially averaged gradient, sums, keeps the
positive part, upsamples to the input size ``S`` and divides by the maximum::

    w_c = mean_hw dScore/dA[h, w, c]        cam = ReLU(sum_c w_c A[:, :, c])  -> bilinear to [S, S] -> / max

Limits, worth saying wherever the maps are shown:

* The resolution is the last stage's grid (S/32: 7 x 7 for 224 px); the map is blurred by construction.
* The map shows what raised the score, not what a dermatologist would look at; a model that learned a shortcut
  (a ruler, the vignette) highlights the shortcut.
* Each map is normalised on its own: colours compare regions within one image, not modalities or lesions.
* When no region raises the score (all gradients zero: saturated head, a modality the fusion ignores) the map is
  all zeros, never noise stretched to [0, 1].

The result is deterministic for the same input and weights: the model runs in eval mode (no dropout) on the
same device. Framework-free (no TorchServe, nothing from ``training``), so the handler and the CLI share it.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from model.config import AUX_MODALITIES, MODALITIES
from model.fusion_model import FusionModel

DEFAULT_ALPHA = 0.45  # weight of the colour map over the photo


@dataclass(frozen=True, eq=False)
class Explanation:
    score: float
    heatmaps: dict[str, np.ndarray]  # modality -> [S, S] float32 in [0, 1], for each modality the model used


def explain(model: FusionModel, tensors: dict[str, Tensor], aux_mask: Tensor | None = None) -> Explanation:
    """Score one lesion and return a Grad-CAM map per modality it used.

    Args:
        model: a FusionModel; put in eval mode for the call and restored afterwards.
        tensors: ``{modality: [1, 3, S, S]}`` preprocessed images; ``clinical`` is required.
        aux_mask: ``[1, 2]`` bool over ``AUX_MODALITIES``; by default a given image counts as present. A modality
            masked out is not encoded and gets no map.
    """
    unknown = sorted(set(tensors) - set(MODALITIES))
    if unknown:
        raise ValueError(f"unknown modality {unknown}; expected some of {MODALITIES}")
    if "clinical" not in tensors:
        raise ValueError("the clinical image is required to explain a score; dermoscopy and multispectral are optional")
    if any(t.ndim != 4 or t.shape[0] != 1 for t in tensors.values()):
        raise ValueError(f"explain takes one lesion: tensors of shape [1, 3, S, S], got "
                         f"{ {m: tuple(t.shape) for m, t in tensors.items()} }")
    activations: dict[str, Tensor] = {}
    hooks = [model.encoders[m].backbone.layers[-1].register_forward_hook(_keeper(activations, m)) for m in tensors]
    was_training = model.training
    model.eval()
    try:
        # Grad-CAM needs autograd even when the caller serves under inference_mode / no_grad.
        with torch.inference_mode(False), torch.enable_grad():
            score = model(**{m: t.clone() for m, t in tensors.items()}, aux_mask=aux_mask).score  # [1]
            names = list(activations)
            grads = torch.autograd.grad(score.sum(), [activations[m] for m in names], allow_unused=True)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    size = tensors["clinical"].shape[-2:]
    heatmaps = {m: _grad_cam(activations[m].detach(), g, size) for m, g in zip(names, grads)}
    ordered = {m: heatmaps[m] for m in MODALITIES if m in heatmaps}
    return Explanation(float(score.detach()), ordered)


def _keeper(store: dict[str, Tensor], modality: str):
    def hook(module, inputs, output: Tensor) -> None:
        if not output.requires_grad:  # frozen weights (requires_grad=False): still differentiate w.r.t. the map
            output.requires_grad_(True)
        store[modality] = output  # [1, h, w, C]

    return hook


def _grad_cam(activation: Tensor, grad: Tensor | None, size: torch.Size) -> np.ndarray:
    """NHWC ``[1, h, w, C]`` activation and its gradient -> ``[S, S]`` float32 in [0, 1] (zeros if no evidence)."""
    if grad is None:
        return np.zeros(tuple(size), np.float32)
    weights = grad.mean(dim=(1, 2), keepdim=True)  # [1, 1, 1, C]
    cam = (weights * activation).sum(dim=-1).clamp_min(0)  # [1, h, w]
    cam = F.interpolate(cam.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
    peak = float(cam.max())
    if not peak > 0.0:
        return np.zeros(tuple(size), np.float32)
    return (cam / peak).clamp(0.0, 1.0).cpu().numpy().astype(np.float32)


def aux_mask_for(tensors: dict[str, Tensor]) -> Tensor:
    """``[1, 2]`` bool: which auxiliary modalities are among ``tensors``."""
    return torch.tensor([[m in tensors for m in AUX_MODALITIES]])


# --------------------------------------------------------------------------------------------------- overlays


def overlay(original: Image.Image, heatmap: np.ndarray, alpha: float = DEFAULT_ALPHA,
            max_side: int | None = None) -> Image.Image:
    """The JET-coloured heatmap blended over the original photo, at the photo's own size and aspect ratio.

    The model saw the photo squashed to ``S x S`` (``model.preprocessing`` resizes without cropping), so
    stretching the square map back to the photo's width and height puts every value over the pixels it came
    from. ``max_side`` shrinks both (same aspect ratio) for a lighter response; None keeps the original size.
    """
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be [H, W], got shape {heatmap.shape}")
    photo = original.convert("RGB")
    if max_side is not None and max(photo.size) > max_side:
        factor = max_side / max(photo.size)
        photo = photo.resize((max(1, round(photo.width * factor)), max(1, round(photo.height * factor))),
                             Image.BILINEAR)
    heat = cv2.resize(np.asarray(heatmap, np.float32), photo.size, interpolation=cv2.INTER_LINEAR)
    heat_u8 = np.clip(heat * 255.0 + 0.5, 0, 255).astype(np.uint8)
    colours = cv2.cvtColor(cv2.applyColorMap(heat_u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    blended = (1.0 - alpha) * np.asarray(photo, np.float32) + alpha * colours.astype(np.float32)
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))


def overlay_png(original: Image.Image, heatmap: np.ndarray, alpha: float = DEFAULT_ALPHA,
                max_side: int | None = None) -> bytes:
    """:func:`overlay` encoded as PNG bytes."""
    buffer = io.BytesIO()
    overlay(original, heatmap, alpha, max_side).save(buffer, format="PNG")
    return buffer.getvalue()


def overlay_base64(original: Image.Image, heatmap: np.ndarray, alpha: float = DEFAULT_ALPHA,
                   max_side: int | None = None) -> str:
    """:func:`overlay_png` as an ASCII base64 string, for JSON responses."""
    return base64.b64encode(overlay_png(original, heatmap, alpha, max_side)).decode("ascii")
