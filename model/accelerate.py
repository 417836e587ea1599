"""Fast inference paths for a loaded FusionModel, chosen by name; the model's signature and outputs stay the same.

Only the three Swin encoders are accelerated: they are nearly all of a request's arithmetic, while the
cross-attention and the head are tiny (docs/performance_notes.md has the FLOP counts). :func:`accelerate` swaps
each ``model.encoders[m]`` for a module with the same contract (``[B, 3, S, S]`` float32 -> ``[B, D]`` float32)
and leaves ``FusionModel``'s masking untouched, so mixed modality subsets still encode only their present rows
(an encoder sees any batch size 1..max_batch) and every sample's score equals its score alone.

Backends (``BACKENDS``):

* ``eager_fp32``: the model as it is; the reference every other path is measured against.
* ``eager_bf16``: ``torch.autocast`` bf16 around each encoder (CPU with AVX-512 bf16 or AMX, or CUDA). No warm-up.
* ``eager_fp16``: the same in fp16, CUDA only (for GPUs without fast bf16).
* ``compile_bf16``: ``torch.compile`` (inductor, weight freezing) under bf16 autocast, CPU. The batch dimension
  is dynamic, so one compile serves batches 2..max_batch and a second one batch 1 (dynamo specialises size 1):
  two compiles per encoder instead of one per batch size. Compiling takes minutes of warm-up
  (docs/performance_notes.md): usable, but slow to start a TorchServe worker.
* ``openvino_bf16``: each encoder converted from the torch module to OpenVINO with a dynamic batch dimension and
  compiled for the CPU with bf16 inference precision, one stream, ``threads`` threads and thread pinning off
  (OpenVINO pins its threads to cores by default, which stacks two workers' threads on the same core). A few
  seconds per encoder; the torch weights of the encoders are released afterwards. Needs ``pip install openvino``.

Grad-CAM (model.saliency) needs the eager encoders' autograd graph: explain with a model that was not accelerated.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from model.config import MODALITIES
from model.cpu import bf16_units
from model.fusion_model import FusionModel
from model.swin_encoder import SwinEncoder

log = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("eager_fp32", "eager_bf16", "eager_fp16", "compile_bf16", "openvino_bf16")
CPU_ONLY: tuple[str, ...] = ("compile_bf16", "openvino_bf16")
GPU_ONLY: tuple[str, ...] = ("eager_fp16",)  # CPUs without AMX-FP16 run fp16 matmuls emulated, slower than fp32


def available_backends(device: str | torch.device = "cpu") -> tuple[str, ...]:
    """The backends that can run here on ``device`` (OpenVINO only if installed, compiled paths only on CPU)."""
    device = torch.device(device)
    names = []
    for name in BACKENDS:
        if (device.type != "cpu" and name in CPU_ONLY) or (device.type == "cpu" and name in GPU_ONLY):
            continue
        if name == "eager_bf16" and device.type == "cpu" and not bf16_units():
            continue
        if name == "openvino_bf16" and not _openvino_installed():
            continue
        names.append(name)
    return tuple(names)


def accelerate(model: FusionModel, backend: str, max_batch: int = 1, threads: int | None = None,
               warmup: bool = True) -> FusionModel:
    """Swap ``model``'s encoders for ``backend``'s, in place, and warm them up for batch sizes 1..``max_batch``.

    Args:
        model: an eval-mode FusionModel on its inference device.
        backend: one of ``BACKENDS``.
        max_batch: the largest batch an encoder can receive (TorchServe's ``batchSize``); warm-up runs every size
            1..max_batch so that no request pays a compile or a first-shape cost.
        threads: CPU threads for the OpenVINO backend (torch paths use ``torch.get_num_threads()``).
        warmup: set False only in tests that warm up themselves.

    Returns:
        ``model`` itself, with the same forward signature and outputs.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    device = next(model.fusion.parameters()).device
    if backend not in available_backends(device):
        raise ValueError(f"backend {backend!r} is not available on {device} here; available: "
                         f"{available_backends(device)} (openvino_bf16 needs `pip install openvino`, "
                         f"bf16 on CPU needs AVX-512 bf16 or AMX)")
    if not all(isinstance(model.encoders[m], SwinEncoder) for m in MODALITIES):
        raise ValueError("the model's encoders are already accelerated; accelerate a freshly loaded model")
    model.eval()
    if backend == "eager_fp32":
        return model
    start = time.perf_counter()
    image_size = int(model.encoders[MODALITIES[0]].backbone.patch_embed.img_size[0])
    for name in MODALITIES:
        encoder = model.encoders[name]
        if backend in ("eager_bf16", "eager_fp16"):
            dtype = torch.bfloat16 if backend == "eager_bf16" else torch.float16
            model.encoders[name] = AutocastEncoder(encoder, device, dtype)
        elif backend == "compile_bf16":
            model.encoders[name] = CompiledEncoder(encoder, max_batch)
        else:
            model.encoders[name] = OpenVINOEncoder(encoder, image_size, threads or torch.get_num_threads())
    if warmup:
        warm_up(model, range(1, max_batch + 1), image_size)
    log.info("%s encoders ready in %.1f s (batch sizes 1..%d warmed up)", backend, time.perf_counter() - start,
             max_batch)
    return model


@torch.inference_mode()
def warm_up(model: FusionModel, batch_sizes: Iterable[int], image_size: int) -> None:
    """Run every encoder once at each batch size: compiles and first-shape work happen here, not in a request."""
    device = next(iter(model.fusion.parameters())).device
    for batch in batch_sizes:
        images = torch.zeros(batch, 3, image_size, image_size, device=device)
        for name in MODALITIES:
            model.encoders[name](images)


class AutocastEncoder(nn.Module):
    """An encoder run under bf16 autocast; features come back as float32 for the fp32 fusion and head."""

    def __init__(self, encoder: nn.Module, device: torch.device, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.encoder = encoder
        self.device_type = device.type
        self.dtype = dtype
        self.num_features = encoder.num_features

    def forward(self, images: Tensor) -> Tensor:
        """``[B, 3, S, S]`` float32 -> ``[B, D]`` float32."""
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.encoder(images).float()


class CompiledEncoder(nn.Module):
    """``torch.compile`` (inductor, freezing) of a bf16-autocast encoder, dynamic in the batch dimension."""

    def __init__(self, encoder: nn.Module, max_batch: int):
        super().__init__()
        import torch._inductor.config as inductor_config

        self.max_batch = max_batch
        inductor_config.freezing = True  # weights become constants: folded bf16 casts and fused weight layouts
        self.encoder = AutocastEncoder(encoder, torch.device("cpu"))
        self.num_features = encoder.num_features
        self.compiled = torch.compile(self.encoder, backend="inductor")

    def forward(self, images: Tensor) -> Tensor:
        """``[B, 3, S, S]`` float32 -> ``[B, D]`` float32; batch 1 and batches >= 2 each compile once."""
        if images.shape[0] > self.max_batch:
            raise ValueError(f"batch of {images.shape[0]} exceeds the max_batch={self.max_batch} compiled for")
        if images.shape[0] >= 2:  # one graph for every batch 2..max_batch, not one per size
            torch._dynamo.mark_dynamic(images, 0, min=2, max=max(2, self.max_batch))
        return self.compiled(images)


class OpenVINOEncoder(nn.Module):
    """An encoder converted to OpenVINO (dynamic batch, bf16 precision hint) and compiled for the CPU."""

    def __init__(self, encoder: nn.Module, image_size: int, threads: int):
        super().__init__()
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        self.num_features = encoder.num_features
        example = torch.zeros(1, 3, image_size, image_size)
        with torch.no_grad(), warnings.catch_warnings():
            # timm's shape asserts are traced as constants: true for every batch size, which is all that varies.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", FutureWarning)  # OpenVINO's converter still traces with TorchScript
            ov_model = ov.convert_model(encoder, example_input=example,
                                        input=[ov.PartialShape([-1, 3, image_size, image_size])])
        config = {
            hints.inference_precision: "bf16" if bf16_units() else "f32",
            hints.performance_mode: hints.PerformanceMode.LATENCY,
            props.num_streams: 1,  # one request at a time per worker: TorchServe already batches for us
            props.inference_num_threads: int(threads),
            hints.enable_cpu_pinning: False,  # pinned threads of two workers would share cores
        }
        self.compiled = ov.Core().compile_model(ov_model, "CPU", config)
        self.request = self.compiled.create_infer_request()

    def forward(self, images: Tensor) -> Tensor:
        """``[B, 3, S, S]`` float32 -> ``[B, D]`` float32."""
        if images.shape[0] == 0:
            return images.new_zeros(0, self.num_features)
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        result = self.request.infer({0: array}, share_inputs=True)
        return torch.from_numpy(result[0].copy()).to(images.device)


def _openvino_installed() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True
