"""Train the fusion model: ``python -m training.train --config CONFIG --data DATA --out RUN_DIR``.

Writes to RUN_DIR:

* ``config.yaml``      the resolved configuration (every default filled in)
* ``best_model.pth``   the checkpoint with the lowest validation loss (the model to evaluate, export and serve)
* ``last.pth``         the latest completed epoch, plus optimizer/RNG state and history, for ``--resume``
* ``history.csv``      epoch, train_loss, val_loss, val_mae, lr, seconds

Both checkpoints load with ``torch.load(..., weights_only=True)``. Their provenance records the data hash, the
patient split (so ``evaluate --split val`` scores exactly the validation lesions), the training-label mean (the
baseline evaluation compares against), the git commit, the best metrics and the resolved config.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import math
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from model.checkpoint import build_checkpoint, load_checkpoint, save_checkpoint
from model.fusion_model import FusionModel
from training.config import RunConfig, TrainConfig, load_config, save_config
from training.data import DatasetIndex, LesionDataset, index_dataset, split_by_patient

log = logging.getLogger("training.train")

HISTORY_FIELDS = ("epoch", "train_loss", "val_loss", "val_mae", "lr", "seconds")


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    index: DatasetIndex
    split: dict[str, list[str]]  # {"train": lesion ids, "val": lesion ids}
    train_label_mean: float


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
    args = p.parse_args(argv)
    if args.config is None and not args.resume:
        p.error("--config is required (e.g. --config training/configs/demo.yaml)")
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = resolve_config(args)
    torch.set_num_threads(cfg.training.threads or available_cores())
    torch.manual_seed(cfg.training.seed)
    device = pick_device(cfg.device.use_gpu)
    loaders = build_loaders(args.data, cfg)
    model = FusionModel(cfg.model, cfg.data.image_size).to(device)
    fit(model, loaders, cfg, args.out, device, resume=args.resume, progress=not args.quiet)
    return args.out / "best_model.pth"


def resolve_config(args: argparse.Namespace) -> RunConfig:
    """Load the config (on resume without --config: the run's own) and write the resolved one into the run."""
    saved = args.out / "config.yaml"
    if args.resume and not (args.out / "last.pth").is_file():
        raise FileNotFoundError(f"{args.out / 'last.pth'}: nothing to resume; start the run without --resume")
    cfg = load_config(args.config or saved, args.overrides)
    if args.resume and saved.is_file() and load_config(saved) != cfg:
        log.warning("%s differs from the config given now; resuming with the new one", saved)
    save_config(cfg, saved)
    return cfg


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def pick_device(use_gpu: bool) -> torch.device:
    if use_gpu and torch.cuda.is_available():
        return torch.device("cuda")
    if use_gpu:
        log.warning("device.use_gpu is true but CUDA is not available; training on the CPU")
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


def build_loaders(data: Path, cfg: RunConfig) -> Loaders:
    """Index the data, split it by patient, and wrap both sides in DataLoaders."""
    index = index_dataset(data)
    opts, tcfg = cfg.data_options, cfg.training
    train_lesions, val_lesions = split_by_patient(index.lesions, opts.val_fraction, opts.split_seed)
    train_ds = LesionDataset(train_lesions, cfg.data, train=True, augment=tcfg.augment,
                             modality_dropout=tcfg.modality_dropout, cache=opts.cache_images)
    val_ds = LesionDataset(val_lesions, cfg.data, train=False, cache=opts.cache_images)
    if opts.cache_images or opts.skip_bad_images:
        started = time.time()
        for ds in (train_ds, val_ds):
            index.skipped["bad_image"] += ds.preload(opts.skip_bad_images)
        log.info("decoded %d lesions in %.1f s", len(train_ds) + len(val_ds), time.time() - started)
    log.info("%s: %d lesions for training, %d for validation (patient split, seed %d); skipped %s",
             data, len(train_ds), len(val_ds), opts.split_seed, index.skip_counts())
    generator = torch.Generator().manual_seed(tcfg.seed)
    common = dict(batch_size=tcfg.batch_size, num_workers=tcfg.num_workers,
                  persistent_workers=tcfg.num_workers > 0, pin_memory=torch.cuda.is_available())
    return Loaders(
        train=DataLoader(train_ds, shuffle=True, generator=generator, **common),
        val=DataLoader(val_ds, shuffle=False, **common),
        index=index,
        split={"train": [x.lesion_id for x in train_ds.lesions], "val": [x.lesion_id for x in val_ds.lesions]},
        train_label_mean=sum(x.score for x in train_ds.lesions) / len(train_ds.lesions),
    )


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------


def fit(model: FusionModel, loaders: Loaders, cfg: RunConfig, out_dir: Path, device: torch.device,
        resume: bool = False, progress: bool = True) -> list[dict[str, float]]:
    """Train for ``cfg.training.epochs`` epochs, validating and checkpointing after each; returns the history."""
    tcfg = cfg.training
    optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg.learning_rate, weight_decay=tcfg.weight_decay)
    use_amp = tcfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    state = {"epoch": 0, "best_val": math.inf, "history": []}
    if resume:
        state = restore(out_dir / "last.pth", model, optimizer, scaler, loaders)
    for epoch in range(state["epoch"] + 1, tcfg.epochs + 1):
        started = time.time()
        lr = set_learning_rate(optimizer, tcfg, epoch)
        train_loss = train_one_epoch(model, loaders.train, optimizer, scaler, tcfg, device, use_amp,
                                     desc=f"epoch {epoch}/{tcfg.epochs} [train]", progress=progress)
        val_loss, val_mae = validate(model, loaders.val, device, use_amp, progress=progress,
                                     desc=f"epoch {epoch}/{tcfg.epochs} [val]")
        row = dict(epoch=epoch, train_loss=train_loss, val_loss=val_loss, val_mae=val_mae, lr=lr,
                   seconds=round(time.time() - started, 2))
        state["history"].append(row)
        log.info("epoch %d/%d: train_loss %.4f  val_loss %.4f  val_mae %.4f  (%.1f s)", epoch, tcfg.epochs,
                 train_loss, val_loss, val_mae, row["seconds"])
        provenance = make_provenance(cfg, loaders, out_dir, epoch, val_loss, val_mae)
        if val_loss < state["best_val"]:
            state["best_val"] = val_loss
            provenance["model_version"] = model_version(model, out_dir.name, epoch)
            save_checkpoint(build_checkpoint(model, cfg.model, cfg.data, cfg.severity, provenance),
                            out_dir / "best_model.pth")
        state["epoch"] = epoch
        save_last(out_dir / "last.pth", model, optimizer, scaler, cfg, provenance, state, loaders.train.generator)
        write_history(out_dir / "history.csv", state["history"])
    return state["history"]


def set_learning_rate(optimizer: torch.optim.Optimizer, tcfg: TrainConfig, epoch: int) -> float:
    """The learning rate for 1-based ``epoch``: linear warm-up, then constant or cosine decay (per epoch)."""
    if epoch <= tcfg.warmup_epochs:
        lr = tcfg.learning_rate * epoch / (tcfg.warmup_epochs + 1)
    elif tcfg.lr_schedule == "cosine":
        progress = (epoch - 1 - tcfg.warmup_epochs) / max(1, tcfg.epochs - tcfg.warmup_epochs)
        lr = tcfg.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))
    else:
        lr = tcfg.learning_rate
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, tcfg: TrainConfig, device: torch.device, use_amp: bool,
                    desc: str = "train", progress: bool = True) -> float:
    """One pass over ``loader``; returns the mean MSE per sample."""
    model.train()
    total, count = 0.0, 0
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress)
    for batch in bar:
        target = batch["score"].to(device)
        with torch.autocast(device.type, enabled=use_amp):
            pred = predict_batch(model, batch, device)
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
    return total / max(count, 1)


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, device: torch.device, use_amp: bool = False,
             desc: str = "val", progress: bool = True) -> tuple[float, float]:
    """Mean MSE and MAE over ``loader`` with every available modality."""
    model.eval()
    sq, ab, count = 0.0, 0.0, 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        target = batch["score"].to(device)
        with torch.autocast(device.type, enabled=use_amp):
            pred = predict_batch(model, batch, device).float()
        sq += ((pred - target) ** 2).sum().item()
        ab += (pred - target).abs().sum().item()
        count += len(target)
    return sq / max(count, 1), ab / max(count, 1)


def predict_batch(model: nn.Module, batch: dict[str, Any], device: torch.device,
                  aux_mask: Tensor | None = None) -> Tensor:
    """A collated :class:`LesionDataset` batch -> scores ``[B]``; ``aux_mask`` overrides the batch's own."""
    mask = batch["aux_mask"] if aux_mask is None else aux_mask
    return model(batch["clinical"].to(device, non_blocking=True), batch["dermoscopy"].to(device, non_blocking=True),
                 batch["multispectral"].to(device, non_blocking=True), mask.to(device)).score


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
    main()
