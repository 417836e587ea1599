"""Train the fusion model: ``python -m training.train --config CONFIG --data DATA --out RUN_DIR``.

Writes to RUN_DIR:

* ``config.yaml``      the resolved configuration (every default filled in)
* ``best_model.pth``   the checkpoint with the lowest validation loss (the model to evaluate, export and serve);
  after the last epoch it gains its ``trust`` section (``training.calibrate.fit_trust``: the training lesions'
  encoder features, the validation lesions' residuals per modality subset and out-of-distribution thresholds)
* ``last.pth``         the latest completed epoch, plus optimizer/RNG state and history, for ``--resume``
* ``history.csv``      epoch, train_loss, val_loss, val_mae, lr, seconds

Both checkpoints load with ``torch.load(..., weights_only=True)``. Their provenance records the data hash, the
patient split (so ``evaluate --split val`` scores exactly the validation lesions), the training-label mean (the
baseline evaluation compares against), the git commit, the best metrics and the resolved config.

``torchrun --nproc_per_node=N -m training.train ...`` trains with DistributedDataParallel, one process per GPU (or N
CPU processes with gloo): ``training.batch_size`` is per process, each rank trains on its DistributedSampler share,
validation is sharded by whole batches and its sums are all-reduced, and rank 0 alone writes the same files in the
same format (docs/training.md).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from model.checkpoint import build_checkpoint, load_checkpoint, model_from_checkpoint, save_checkpoint
from model.cli import run
from model.cpu import bf16_units, threads_per_worker
from model.fusion_model import FusionModel
from training import distributed
from training.calibrate import fit_trust
from training.config import RunConfig, TrainConfig, load_config, save_config
from training.data import (
    Augmentation,
    DatasetIndex,
    Lesion,
    LesionDataset,
    index_dataset,
    split_by_patient,
    split_from_manifest,
)
from training.distributed import Dist, all_reduce_sums

log = logging.getLogger("training.train")

HISTORY_FIELDS = ("epoch", "train_loss", "val_loss", "val_mae", "lr", "seconds")


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    index: DatasetIndex
    split: dict[str, list[str]]  # {"train", "val"[, "test": a manifest's][, "calibration"]}: lesion ids
    train_label_mean: float
    calibration: list[Lesion] | None = None  # kept out of training and selection (data.calibration_fraction)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, help="YAML config (training/configs/); with --resume, defaults to "
                                               "RUN_DIR/config.yaml")
    p.add_argument("--data", type=Path, required=True,
                   help="dataset folder (clinical/images/, labels.csv, ...) or a manifest .csv")
    p.add_argument("--out", type=Path, required=True, help="run folder for checkpoints, history and config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set training.epochs=3 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pth")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--processes", default="1", metavar="N|auto",
                   help="data-parallel processes on this machine (default 1); auto: one per GPU, else one per CPU "
                        "core, at most 2 (a small model trains faster in 2 one-thread processes than in one)")
    args = p.parse_args(argv)
    if args.processes != "auto" and not (args.processes.isdigit() and int(args.processes) >= 1):
        p.error(f"--processes must be a positive integer or auto, got {args.processes!r}")
    if args.config is None and not args.resume:
        p.error("--config is required (e.g. --config training/configs/demo.yaml)")
    return args


def main(argv: list[str] | None = None) -> Path | int:
    args = parse_args(argv)
    configure_logging(distributed.launch_rank())
    cfg = resolve_config(args)
    processes = local_processes(args, cfg)
    if processes > 1:  # this process starts the workers (each a plain run of this command) and waits for them
        if not args.data.exists():  # said once here rather than once by every worker
            raise FileNotFoundError(f"--data {args.data}: no such dataset folder or manifest; check the path")
        log.info("training in %d data-parallel processes on this machine", processes)
        return distributed.launch_local("training.train", worker_argv(argv), processes)
    env, device = distributed.setup(cfg.device.use_gpu)  # a process group only under torchrun
    ok = False
    try:
        if env.launched:
            torch.distributed.barrier()  # every rank has read the run's config.yaml before rank 0 rewrites it
        if env.is_main:
            save_config(cfg, args.out / "config.yaml")
        torch.set_num_threads(threads_per_worker(env.local_world_size, cfg.training.threads or 0))
        torch.manual_seed(cfg.training.seed)
        loaders = build_loaders(args.data, cfg, env)
        model = FusionModel(cfg.model, cfg.data.image_size).to(device)
        if cfg.training.channels_last:
            model = model.to(memory_format=torch.channels_last)
        fit(model, loaders, cfg, args.out, device, resume=args.resume, progress=not args.quiet, env=env)
        if env.is_main:
            calibrate_best(args.out / "best_model.pth", loaders, device)
        ok = True
    finally:
        distributed.cleanup(env, ok)
    return args.out / "best_model.pth"


CPU_PROCESSES_AUTO_MAX = 2
"""``--processes auto`` on a CPU: at most this many, so the global batch (processes x ``batch_size``) of a recipe
tuned on 2 cores is the same on a larger machine."""


def local_processes(args: argparse.Namespace, cfg: RunConfig) -> int:
    """How many processes ``--processes`` asks this command to start (1 when torchrun or we already started it)."""
    if distributed.launched_by_torchrun():
        return 1
    if args.processes == "auto":
        return distributed.local_processes(cfg.device.use_gpu, CPU_PROCESSES_AUTO_MAX)
    return int(args.processes)


def worker_argv(argv: list[str] | None) -> list[str]:
    """This command's arguments for a worker: the same, without ``--processes``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--processes":
            skip = True
        elif not arg.startswith("--processes="):
            out.append(arg)
    return out


def configure_logging(rank: int) -> None:
    """INFO from rank 0 (the only rank of a plain run); torchrun's other ranks report only warnings, tagged."""
    if rank == 0:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    else:
        logging.basicConfig(level=logging.WARNING, format=f"%(levelname)s [rank {rank}] %(name)s: %(message)s")


def resolve_config(args: argparse.Namespace) -> RunConfig:
    """Load the config (on resume without --config: the run's own); ``main`` writes the resolved one into the run."""
    saved = args.out / "config.yaml"
    if args.resume and not (args.out / "last.pth").is_file():
        raise FileNotFoundError(f"{args.out / 'last.pth'}: nothing to resume; start the run without --resume")
    cfg = load_config(args.config or saved, args.overrides)
    if args.resume and saved.is_file() and load_config(saved) != cfg:
        log.warning("%s differs from the config given now; resuming with the new one", saved)
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


def build_loaders(data: Path, cfg: RunConfig, env: Dist = Dist()) -> Loaders:
    """Index the data, split it (a manifest's ``split`` column when filled, else by patient), and wrap both sides
    in DataLoaders (under torchrun: this rank's share).

    Every rank indexes, splits and (with ``data.cache_images``) decodes the whole dataset: the split must be the
    same everywhere, and it is cheap next to training.
    """
    index = index_dataset(data)
    opts, tcfg = cfg.data_options, cfg.training
    fixed = split_from_manifest(index.lesions)
    if fixed is None:
        train_lesions, val_lesions = split_by_patient(index.lesions, opts.val_fraction, opts.split_seed)
        how = f"patient split, seed {opts.split_seed}"
    else:
        train_lesions, val_lesions = fixed["train"], fixed["val"]
        how = f"the manifest's split; {len(fixed['test'])} test lesions held out"
    calibration = None
    if opts.calibration_fraction > 0:
        train_lesions, calibration = split_by_patient(
            train_lesions, opts.calibration_fraction / (1.0 - opts.val_fraction), opts.split_seed + 1)
    train_ds = LesionDataset(train_lesions, cfg.data, train=True, augment=augmentation(tcfg),
                             modality_dropout=tcfg.modality_dropout, cache=opts.cache_images)
    val_ds = LesionDataset(val_lesions, cfg.data, train=False, cache=opts.cache_images)
    if opts.cache_images or opts.skip_bad_images:
        started = time.time()
        for ds in (train_ds, val_ds):
            index.skipped["bad_image"] += ds.preload(opts.skip_bad_images)
        log.info("decoded %d lesions in %.1f s", len(train_ds) + len(val_ds), time.time() - started)
    log.info("%s: %d lesions for training, %d for validation, %d for calibration (%s); skipped %s",
             data, len(train_ds), len(val_ds), len(calibration or []), how, index.skip_counts())
    generator = torch.Generator().manual_seed(tcfg.seed)
    common = dict(num_workers=tcfg.num_workers, persistent_workers=tcfg.num_workers > 0,
                  pin_memory=torch.cuda.is_available())
    if env.launched:
        # Training: each rank a disjoint 1/world_size of a seeded per-epoch shuffle (padded with repeats to equal
        # length, so every rank takes the same number of steps). Validation: whole single-process batches.
        sampler = DistributedSampler(train_ds, env.world_size, env.rank, shuffle=True, seed=tcfg.seed)
        train = DataLoader(train_ds, batch_size=tcfg.batch_size, sampler=sampler, generator=generator, **common)
        val = DataLoader(val_ds, batch_sampler=distributed.shard_batches(len(val_ds), tcfg.batch_size, env),
                         **common)
    else:
        train = DataLoader(train_ds, batch_size=tcfg.batch_size, shuffle=True, generator=generator, **common)
        val = DataLoader(val_ds, batch_size=tcfg.batch_size, shuffle=False, **common)
    split = {"train": [x.lesion_id for x in train_ds.lesions], "val": [x.lesion_id for x in val_ds.lesions]}
    if fixed is not None:
        split["test"] = [x.lesion_id for x in fixed["test"]]
    if calibration:
        split["calibration"] = [x.lesion_id for x in calibration]
    return Loaders(
        train=train,
        val=val,
        index=index,
        split=split,
        train_label_mean=sum(x.score for x in train_ds.lesions) / len(train_ds.lesions),
        calibration=calibration,
    )


def augmentation(tcfg: TrainConfig) -> Augmentation | bool:
    """The training config's augmentation keys as the dataset takes them (False: none)."""
    if not tcfg.augment:
        return False
    return Augmentation(rotation_degrees=tcfg.rotation_degrees, crop_scale=tcfg.crop_scale,
                        color_jitter=dict(tcfg.color_jitter), clinical_crop_scale=tcfg.clinical_crop_scale,
                        noise=tcfg.noise)


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Precision:
    """How the training forward runs: autocast ``dtype`` on ``device_type`` (None: fp32), loss scaling or not."""

    dtype: torch.dtype | None
    device_type: str
    scale_loss: bool = False  # fp16 on CUDA needs a GradScaler; bf16 has fp32's exponent range and does not

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)


def resolve_precision(tcfg: TrainConfig, device: torch.device, has_bf16: bool | None = None) -> Precision:
    """CUDA: fp16 autocast with loss scaling when ``training.amp``. CPU: ``training.cpu_precision``, where "auto"
    means bf16 autocast on CPUs with native bf16 matmuls (AVX-512 bf16 or AMX, read from /proc/cpuinfo at run time)
    and fp32 elsewhere, since emulated bf16 is slower than fp32."""
    if device.type == "cuda":
        return Precision(torch.float16 if tcfg.amp else None, "cuda", scale_loss=tcfg.amp)
    native = bool(bf16_units()) if has_bf16 is None else has_bf16
    if tcfg.cpu_precision == "bf16" and not native:
        raise ValueError("training.cpu_precision=bf16, but this CPU has no native bf16 (AVX-512 bf16 or AMX); "
                         "use training.cpu_precision=auto or fp32")
    bf16 = tcfg.cpu_precision == "bf16" or (tcfg.cpu_precision == "auto" and native)
    return Precision(torch.bfloat16 if bf16 else None, device.type)


def parameter_groups(model: FusionModel, tcfg: TrainConfig) -> list[dict[str, Any]]:
    """Two AdamW groups: the encoders at ``learning_rate x encoder_lr_scale``, fusion and head at
    ``learning_rate``; ``lr_scale`` in each group lets the schedule scale both alike."""
    encoder = [p for p in model.encoders.parameters() if p.requires_grad]
    encoder_ids = {id(p) for p in encoder}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in encoder_ids]
    return [
        {"params": encoder, "name": "encoders", "lr_scale": tcfg.encoder_lr_scale},
        {"params": rest, "name": "fusion_head", "lr_scale": 1.0},
    ]


def epochs_since_best(history: list[dict[str, float]]) -> int:
    """Epochs after the one with the lowest val_loss (0 when the latest is the best)."""
    if not history:
        return 0
    best = min(range(len(history)), key=lambda i: history[i]["val_loss"])
    return len(history) - 1 - best


def fit(model: FusionModel, loaders: Loaders, cfg: RunConfig, out_dir: Path, device: torch.device,
        resume: bool = False, progress: bool = True, env: Dist = Dist()) -> list[dict[str, float]]:
    """Train for ``cfg.training.epochs`` epochs, validating and checkpointing after each; returns the history.

    Under torchrun every rank runs this with its own loaders; losses and metrics are reduced over all ranks, so
    every rank holds the same history, and rank 0 alone writes checkpoints (of ``model``, never the DDP wrapper:
    the same keys as a single-process run) and history.
    """
    tcfg = cfg.training
    optimizer = torch.optim.AdamW(parameter_groups(model, tcfg), lr=tcfg.learning_rate,
                                  weight_decay=tcfg.weight_decay)
    precision = resolve_precision(tcfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=precision.scale_loss)
    state = {"epoch": 0, "best_val": math.inf, "history": []}
    if resume:
        state = restore(out_dir / "last.pth", model, optimizer, scaler, loaders)  # every rank loads last.pth
    trained = wrap_for_ddp(model, env, device)
    progress = progress and env.is_main
    log.info("training in %s on %s with %d thread(s)", precision.name, device, torch.get_num_threads())
    for epoch in range(state["epoch"] + 1, tcfg.epochs + 1):
        if tcfg.early_stopping_patience and epochs_since_best(state["history"]) >= tcfg.early_stopping_patience:
            log.info("early stopping: val_loss has not improved for %d epochs (best at epoch %d)",
                     tcfg.early_stopping_patience, epoch - 1 - tcfg.early_stopping_patience)
            break
        started = time.time()
        if env.launched:
            seed_rank_for_epoch(loaders, tcfg.seed, epoch, env)
        lr = set_learning_rate(optimizer, tcfg, epoch)
        train_loss = train_one_epoch(trained, loaders.train, optimizer, scaler, tcfg, device, precision,
                                     desc=f"epoch {epoch}/{tcfg.epochs} [train]", progress=progress)
        # The bare model: evaluation needs no gradient sync, and each rank scores its own validation batches.
        # CUDA validates under the training autocast as before; the CPU validates in fp32, the serving reference.
        val_loss, val_mae = validate(model, loaders.val, device, precision.scale_loss, progress=progress,
                                     desc=f"epoch {epoch}/{tcfg.epochs} [val]")
        row = dict(epoch=epoch, train_loss=train_loss, val_loss=val_loss, val_mae=val_mae, lr=lr,
                   seconds=round(time.time() - started, 2))
        state["history"].append(row)
        log.info("epoch %d/%d: train_loss %.4f  val_loss %.4f  val_mae %.4f  (%.1f s)", epoch, tcfg.epochs,
                 train_loss, val_loss, val_mae, row["seconds"])
        is_best = val_loss < state["best_val"]  # the same on every rank: val_loss is reduced over all of them
        if is_best:
            state["best_val"] = val_loss
        state["epoch"] = epoch
        if env.is_main:
            save_epoch(model, optimizer, scaler, cfg, loaders, out_dir, state, is_best)
    return state["history"]


def save_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, cfg: RunConfig,
               loaders: Loaders, out_dir: Path, state: dict[str, Any], is_best: bool) -> None:
    """After epoch ``state["epoch"]``: best_model.pth if ``is_best``, then last.pth and history.csv."""
    row = state["history"][-1]
    provenance = make_provenance(cfg, loaders, out_dir, row["epoch"], row["val_loss"], row["val_mae"])
    if is_best:
        provenance["model_version"] = model_version(model, out_dir.name, row["epoch"])
        save_checkpoint(build_checkpoint(model, cfg.model, cfg.data, cfg.severity, provenance),
                        out_dir / "best_model.pth")
    save_last(out_dir / "last.pth", model, optimizer, scaler, cfg, provenance, state, loaders.train.generator)
    write_history(out_dir / "history.csv", state["history"])


def calibrate_best(path: Path, loaders: Loaders, device: torch.device) -> None:
    """Add the ``trust`` section to the best checkpoint: features of the run's training lesions, residuals and
    thresholds of its calibration lesions (``data.calibration_fraction``), else of its validation lesions."""
    checkpoint = load_checkpoint(path)
    loaded = model_from_checkpoint(checkpoint, trust=False)
    loaded.model.to(device)
    started = time.time()
    held_out = loaders.calibration or loaders.val.dataset.lesions
    if not loaders.calibration:
        log.warning("calibrating on the validation lesions, which also chose the checkpoint: the interval may "
                    "under-cover; set data.calibration_fraction or run training.calibrate on other labelled data")
    section, summary = fit_trust(loaded.model, loaded.data_cfg, loaded.severity, loaders.train.dataset.lesions,
                                 held_out, device=device)
    summary["method"] = "the run's calibration split" if loaders.calibration else "the run's validation split"
    checkpoint["trust"] = section
    checkpoint["provenance"] = {**checkpoint["provenance"], "calibration": summary}
    save_checkpoint(checkpoint, path)
    log.info("calibrated %s in %.1f s: %.0f%% half-widths %s, OOD thresholds %s", path, time.time() - started,
             100 * summary["coverage"],
             {k: round(v, 3) for k, v in summary["half_widths"].items()},
             {k: round(v, 3) for k, v in summary["ood_thresholds"].items()})


def wrap_for_ddp(model: nn.Module, env: Dist, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel under torchrun (gradients averaged over ranks); ``model`` otherwise.

    ``find_unused_parameters``: FusionModel encodes only the rows that have a modality, so in a step where a
    rank's batch has no dermoscopy (or multispectral) image at all, e.g. after modality dropout, that encoder
    takes no part in the forward on that rank. DDP then counts its gradient as zero from that rank, which is
    the exact gradient of the mean loss over the global batch (tests/test_ddp.py compares with one process).
    """
    if not env.launched:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)


def seed_rank_for_epoch(loaders: Loaders, seed: int, epoch: int, env: Dist) -> None:
    """Under torchrun: this epoch's shuffle (the same on every rank) and this rank's own augmentation, modality
    dropout and dropout draws, all functions of (seed, epoch, rank), so a resumed run draws what a straight one
    would."""
    loaders.train.sampler.set_epoch(epoch)
    rank_seed = distributed.epoch_seed(seed, epoch, env.rank)
    torch.manual_seed(rank_seed)
    loaders.train.generator.manual_seed(rank_seed)  # the base seed of DataLoader workers


def set_learning_rate(optimizer: torch.optim.Optimizer, tcfg: TrainConfig, epoch: int) -> float:
    """The learning rate for 1-based ``epoch``: linear warm-up, then constant or cosine decay (per epoch).

    Returns the base rate; each parameter group gets it times its ``lr_scale`` (see :func:`parameter_groups`).
    """
    if epoch <= tcfg.warmup_epochs:
        lr = tcfg.learning_rate * epoch / (tcfg.warmup_epochs + 1)
    elif tcfg.lr_schedule == "cosine":
        progress = (epoch - 1 - tcfg.warmup_epochs) / max(1, tcfg.epochs - tcfg.warmup_epochs)
        lr = tcfg.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))
    else:
        lr = tcfg.learning_rate
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, tcfg: TrainConfig, device: torch.device, precision: Precision,
                    desc: str = "train", progress: bool = True) -> float:
    """One pass over ``loader``; returns the mean MSE per sample."""
    model.train()
    total, count = 0.0, 0
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress)
    memory_format = torch.channels_last if tcfg.channels_last else None
    for batch in bar:
        target = batch["score"].to(device)
        with precision.autocast():
            pred = predict_batch(model, batch, device, memory_format=memory_format)
        loss = nn.functional.mse_loss(pred.float(), target)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if tcfg.grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        total += loss.item() * len(target)
        count += len(target)
        bar.set_postfix(loss=f"{total / count:.4f}")
    total, count = all_reduce_sums([total, count], device)  # over all ranks under torchrun
    return total / max(count, 1)


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, device: torch.device, use_amp: bool = False,
             desc: str = "val", progress: bool = True) -> tuple[float, float]:
    """Mean MSE and MAE over ``loader`` with every available modality (under torchrun: over every rank's)."""
    model.eval()
    sq, ab, count = 0.0, 0.0, 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        target = batch["score"].to(device)
        with torch.autocast(device.type, enabled=use_amp):
            pred = predict_batch(model, batch, device).float()
        sq += ((pred - target) ** 2).sum().item()
        ab += (pred - target).abs().sum().item()
        count += len(target)
    sq, ab, count = all_reduce_sums([sq, ab, count], device)
    return sq / max(count, 1), ab / max(count, 1)


def predict_batch(model: nn.Module, batch: dict[str, Any], device: torch.device,
                  aux_mask: Tensor | None = None, memory_format: torch.memory_format | None = None) -> Tensor:
    """A collated :class:`LesionDataset` batch -> scores ``[B]``; ``aux_mask`` overrides the batch's own."""
    mask = batch["aux_mask"] if aux_mask is None else aux_mask
    images = [batch[m].to(device, non_blocking=True) for m in ("clinical", "dermoscopy", "multispectral")]
    if memory_format is not None:
        images = [x.contiguous(memory_format=memory_format) for x in images]
    return model(*images, mask.to(device)).score


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints, provenance, history
# ---------------------------------------------------------------------------------------------------------------


def make_provenance(cfg: RunConfig, loaders: Loaders, out_dir: Path, epoch: int, val_loss: float,
                    val_mae: float) -> dict[str, Any]:
    return {
        "run": out_dir.name,
        "data_source": str(loaders.index.source),
        "data_hash": loaders.index.data_hash,
        "git_commit": git_commit(),
        "epoch": epoch,
        "metrics": {"val_loss": val_loss, "val_mae": val_mae},
        "split": loaders.split,
        "skipped": loaders.index.skip_counts(),
        "train_label_mean": loaders.train_label_mean,
        "config": cfg.to_dict(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def model_version(model: nn.Module, run: str, epoch: int) -> str:
    """``<run>-e<epoch>-<8 hex of the weights>``: readable, and different whenever the weights differ."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return f"{run}-e{epoch}-{digest.hexdigest()[:8]}"


def git_commit() -> str | None:
    """The source tree's commit (with ``-dirty`` if modified), or None without git."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("-dirty" if dirty else "")) if commit else None


def save_last(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
              cfg: RunConfig, provenance: dict[str, Any], state: dict[str, Any],
              loader_generator: torch.Generator) -> None:
    """Everything ``--resume`` needs, as tensors and builtins (``weights_only`` loadable)."""
    rng = {"torch": torch.get_rng_state(), "loader": loader_generator.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    checkpoint = build_checkpoint(model, cfg.model, cfg.data, cfg.severity, provenance,
                                  optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
                                  epoch=state["epoch"], best_val=state["best_val"],
                                  history=state["history"], rng=rng)
    save_checkpoint(checkpoint, path)


def restore(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
            loaders: Loaders) -> dict[str, Any]:
    """Load ``last.pth`` into model/optimizer/RNGs; returns ``{"epoch", "best_val", "history"}``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: nothing to resume; start the run without --resume")
    checkpoint = load_checkpoint(path)
    split = checkpoint["provenance"].get("split")
    if split and split["val"] != loaders.split["val"]:
        raise ValueError(f"{path}: the data's patient split differs from the run's; resume with the same --data "
                         f"and data.split_seed, or start a new run")
    model.load_state_dict(checkpoint["state_dict"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    torch.set_rng_state(checkpoint["rng"]["torch"])
    loaders.train.generator.set_state(checkpoint["rng"]["loader"])
    if "cuda" in checkpoint["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
    log.info("resuming %s after epoch %d", path.parent, checkpoint["epoch"])
    return {"epoch": checkpoint["epoch"], "best_val": checkpoint["best_val"], "history": checkpoint["history"]}


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(history)


if __name__ == "__main__":
    run(main)
