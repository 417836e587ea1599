"""The run config: the design's defaults, strict errors that list valid keys, coercion, and --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from training.config import load_config, save_config

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_default_config_is_the_design():
    cfg = load_config(CONFIGS / "default.yaml")
    assert cfg.model.backbone == "swin_tiny_patch4_window7_224" and cfg.model.pretrained
    assert cfg.model.attention_heads == 8 and cfg.model.head_hidden == (256, 64) and cfg.model.dropout == 0.3
    assert cfg.data.image_size == 224 and cfg.data_options.val_fraction == 0.2
    t = cfg.training
    assert (t.batch_size, t.num_workers, t.lr_schedule, t.encoder_lr_scale) == (8, 4, "cosine", 0.1)  # fine-tuning
    assert cfg.device.use_gpu


def test_demo_config_is_the_same_architecture_untrained_and_small():
    cfg = load_config(CONFIGS / "demo.yaml")
    assert cfg.model.backbone == "swin_tiny_patch4_window7_224" and not cfg.model.pretrained
    assert cfg.data.image_size < 224 and cfg.model.backbone_kwargs["embed_dim"] < 96


def test_unknown_key_is_an_error_listing_the_valid_keys(tmp_path):
    with pytest.raises(ValueError, match=r"training\.lr\b.*valid keys are: batch_size, epochs, learning_rate"):
        load_config(_yaml(tmp_path, "training:\n  lr: 0.1\n"))


def test_unknown_data_key_lists_both_preprocessing_and_dataset_keys(tmp_path):
    with pytest.raises(ValueError, match=r"data\.img_size.*image_size.*simulate_multispectral.*val_fraction"):
        load_config(_yaml(tmp_path, "data:\n  img_size: 64\n"))


def test_unknown_section_is_an_error_listing_the_sections(tmp_path):
    with pytest.raises(ValueError, match=r"\['dataset'\].*model, data, severity, training, device"):
        load_config(_yaml(tmp_path, "dataset:\n  clinical_path: x\n"))


def test_yaml_exponent_string_is_coerced_to_float(tmp_path):
    cfg = load_config(_yaml(tmp_path, "training:\n  learning_rate: 3e-4\n"))  # PyYAML reads "3e-4" as a string
    assert cfg.training.learning_rate == 3e-4 and isinstance(cfg.training.learning_rate, float)


def test_a_bad_type_names_the_key_and_value(tmp_path):
    with pytest.raises(TypeError, match=r"training\.batch_size: expected an integer, got 'eight'"):
        load_config(_yaml(tmp_path, "training:\n  batch_size: eight\n"))
    with pytest.raises(TypeError, match=r"device\.use_gpu: expected true or false"):
        load_config(_yaml(tmp_path, "device:\n  use_gpu: maybe\n"))


def test_out_of_range_values_are_errors():
    with pytest.raises(ValueError, match="val_fraction"):
        load_config(None, ["data.val_fraction=1.5"])
    with pytest.raises(ValueError, match="lr_schedule='step'.*constant"):
        load_config(None, ["training.lr_schedule=step"])


def test_set_overrides_are_parsed_as_yaml_and_reach_nested_keys():
    cfg = load_config(CONFIGS / "demo.yaml", [
        "training.learning_rate=3e-4", "model.head_hidden=[16, 8]", "model.backbone_kwargs.embed_dim=48",
        "device.use_gpu=false", "model.pretrained_file=/w/swin.pth",
    ])
    assert cfg.training.learning_rate == 3e-4
    assert cfg.model.head_hidden == (16, 8)
    demo_window = yaml.safe_load((CONFIGS / "demo.yaml").read_text())["model"]["backbone_kwargs"]["window_size"]
    assert cfg.model.backbone_kwargs["embed_dim"] == 48 and cfg.model.backbone_kwargs["window_size"] == demo_window
    assert cfg.device.use_gpu is False and cfg.model.pretrained_file == "/w/swin.pth"


@pytest.mark.parametrize("bad", ["training.epochs", "epochs=3", "train.epochs=3"])
def test_malformed_or_unknown_set_is_an_error_with_an_example(bad):
    with pytest.raises(ValueError, match="--set"):
        load_config(None, [bad])


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config(CONFIGS / "demo.yaml", ["training.epochs=3"])
    assert load_config(save_config(cfg, tmp_path / "config.yaml")) == cfg
