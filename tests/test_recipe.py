"""The training recipe's parts: CPU precision, parameter groups for fine-tuning, the LR schedule, early stopping,
and the pretrained design (default.yaml) fine-tuned from a local weights file with a tiny Swin."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import timm
import torch

from model.checkpoint import load_for_inference
from tests.conftest import TINY_BACKBONE
from training import synth, train
from training.config import TrainConfig, load_config

CONFIGS = Path(train.__file__).parent / "configs"
TINY = [
    f"model.backbone_kwargs={TINY_BACKBONE!r}".replace("(", "[").replace(")", "]"),
    "model.head_hidden=[32, 16]", "data.image_size=64", "training.batch_size=8", "training.num_workers=0",
    "device.use_gpu=false",
]


@pytest.mark.parametrize(("setting", "native", "expected"), [
    ("auto", True, torch.bfloat16), ("auto", False, None), ("fp32", True, None), ("bf16", True, torch.bfloat16),
])
def test_cpu_precision_is_bf16_only_where_the_cpu_runs_it_natively(setting, native, expected):
    precision = train.resolve_precision(TrainConfig(cpu_precision=setting), torch.device("cpu"), has_bf16=native)
    assert precision.dtype == expected and not precision.scale_loss


def test_asking_for_bf16_on_a_cpu_without_it_is_an_error_naming_the_fix():
    with pytest.raises(ValueError, match="cpu_precision=auto or fp32"):
        train.resolve_precision(TrainConfig(cpu_precision="bf16"), torch.device("cpu"), has_bf16=False)


def test_a_bf16_training_step_runs_the_encoders_in_bf16_and_keeps_fp32_weights(tiny_model):
    precision = train.Precision(torch.bfloat16, "cpu")
    seen = []
    handle = tiny_model.encoders["clinical"].backbone.head.register_forward_hook(
        lambda module, args, out: seen.append(args[0].dtype))
    images = torch.randn(2, 3, 64, 64)
    tiny_model.train()
    with precision.autocast():
        score = tiny_model(images, images, images, torch.tensor([[True, False], [True, True]])).score
    torch.nn.functional.mse_loss(score.float(), torch.tensor([0.2, 0.7])).backward()
    handle.remove()
    assert seen == [torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in tiny_model.parameters())
    assert all(torch.isfinite(p.grad).all() for p in tiny_model.parameters() if p.grad is not None)


def test_encoders_and_fusion_head_get_their_own_learning_rates(tiny_model):
    tcfg = TrainConfig(learning_rate=1e-3, encoder_lr_scale=0.1, warmup_epochs=2, lr_schedule="cosine", epochs=10)
    groups = train.parameter_groups(tiny_model, tcfg)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in tiny_model.parameters())  # every parameter, exactly once
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in tiny_model.encoders.parameters()}
    optimizer = torch.optim.AdamW(groups, lr=tcfg.learning_rate)
    for epoch in (1, 2, 3, 7, 10):
        # warm-up: lr * e / (w + 1); then cosine from lr over the remaining 8 epochs (the documented formula)
        expected = 1e-3 * epoch / 3 if epoch <= 2 else 1e-3 * 0.5 * (1 + math.cos(math.pi * (epoch - 3) / 8))
        assert train.set_learning_rate(optimizer, tcfg, epoch) == pytest.approx(expected)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * expected)
        assert optimizer.param_groups[1]["lr"] == pytest.approx(expected)


def test_epochs_since_best_counts_from_the_lowest_validation_loss():
    history = [{"val_loss": v} for v in (0.5, 0.3, 0.4, 0.35)]
    assert train.epochs_since_best(history) == 2
    assert train.epochs_since_best(history[:2]) == 0 and train.epochs_since_best([]) == 0


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("recipe") / "data", n=24, seed=6, clinical_size=(96, 72),
                          dermoscopy_size=64)


def run(data: Path, out: Path, config: Path, *extra: str) -> list[dict[str, str]]:
    argv = ["--config", str(config), "--data", str(data), "--out", str(out), "--quiet"]
    for item in [*TINY, *extra]:
        argv += ["--set", item]
    train.main(argv)
    with (out / "history.csv").open() as f:
        return list(csv.DictReader(f))


def test_training_stops_early_when_validation_loss_stops_falling(small_data, tmp_path, monkeypatch):
    losses = iter([0.30, 0.20, 0.25, 0.26, 0.10, 0.05])  # best at epoch 2, then two worse epochs

    def scripted_validate(*args, **kwargs):
        loss = next(losses)
        return loss, math.sqrt(loss)

    monkeypatch.setattr(train, "validate", scripted_validate)
    history = run(small_data, tmp_path / "run", CONFIGS / "demo.yaml", "training.epochs=6",
                  "training.early_stopping_patience=2")
    assert [int(r["epoch"]) for r in history] == [1, 2, 3, 4]
    assert load_for_inference(tmp_path / "run" / "best_model.pth").provenance["epoch"] == 2


def test_default_recipe_fine_tunes_a_pretrained_swin_from_a_local_file(small_data, tmp_path, monkeypatch):
    """default.yaml: ImageNet weights from pretrained_file (here a tiny Swin with a 1000-class head, written by the
    test), encoders at a tenth of the head's learning rate, warm-up + cosine, early stopping, augmentation."""
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY_BACKBONE.items()}
    torch.manual_seed(1)
    imagenet = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=64, **kwargs)
    weights = tmp_path / "swin_tiny_imagenet.pth"
    torch.save(imagenet.state_dict(), weights)

    cfg = load_config(CONFIGS / "default.yaml")
    t = cfg.training
    assert cfg.model.pretrained and t.encoder_lr_scale < 1 and t.lr_schedule == "cosine" and t.warmup_epochs >= 1
    assert t.early_stopping_patience > 0 and t.augment and t.color_jitter

    seen = {}
    real_fit = train.fit

    def spy_fit(model, *args, **kwargs):
        seen["encoder"] = {k: v.clone() for k, v in model.encoders["dermoscopy"].backbone.state_dict().items()}
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(train, "fit", spy_fit)
    run(small_data, tmp_path / "run", CONFIGS / "default.yaml", f"model.pretrained_file={weights}",
        "training.epochs=2", "training.num_workers=0")
    reference = imagenet.state_dict()
    assert seen["encoder"].keys() <= reference.keys()
    for key, value in seen["encoder"].items():  # the encoders start from the file's weights
        torch.testing.assert_close(value, reference[key], rtol=0, atol=0, msg=key)
    last = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    lrs = [group["lr"] for group in last["optimizer"]["param_groups"]]
    assert lrs[0] == pytest.approx(t.encoder_lr_scale * lrs[1]) and lrs[1] > 0
    assert load_for_inference(tmp_path / "run" / "best_model.pth").model is not None


def test_channels_last_scores_equal_the_default_layout(tiny_model):
    images = torch.randn(3, 3, 64, 64)
    batch = {"clinical": images, "dermoscopy": images.flip(3), "multispectral": images.flip(2),
             "aux_mask": torch.tensor([[True, True], [True, False], [False, False]])}
    with torch.no_grad():
        expected = train.predict_batch(tiny_model, batch, torch.device("cpu"))
        nhwc = train.predict_batch(tiny_model.to(memory_format=torch.channels_last), batch, torch.device("cpu"),
                                   memory_format=torch.channels_last)
    torch.testing.assert_close(nhwc, expected, rtol=1e-5, atol=1e-6)
