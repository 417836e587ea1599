"""Every command-line tool answers a user's mistake with one line on stderr and exit status 2, never a traceback.

Each case runs the real entry point in a fresh process, as a user would, with one typical mistake: a missing or
unreadable file, an unsupported image, a bad config value, a checkpoint of another format.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.bad_inputs import animated_gif

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    gif = root / "lesion.jpg"  # a GIF renamed .jpg: an unsupported image
    gif.write_bytes(animated_gif())
    foreign = root / "resnet.pth"  # a checkpoint of another format: a bare state_dict
    torch.save({"fc.weight": torch.zeros(2, 2)}, foreign)
    config = root / "bad.yaml"
    config.write_text("training:\n  lr: fast\n")
    a_file = root / "not_a_folder"
    a_file.write_text("x")
    return {"root": root, "gif": gif, "foreign": foreign, "config": config, "a_file": a_file,
            "missing": root / "missing.jpg"}


def cases(f: dict[str, Path], ckpt: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (command, a piece of text the one line must contain: the file or value it names)."""
    py = [sys.executable, "-m"]
    return {
        "train: bad config value": ([*py, "training.train", "--config", str(f["config"]), "--data", str(f["root"]),
                                     "--out", str(f["root"] / "run")], "training.lr"),
        "train: missing config": ([*py, "training.train", "--config", str(f["root"] / "none.yaml"), "--data",
                                   str(f["root"]), "--out", str(f["root"] / "run2")], "none.yaml"),
        "evaluate: missing checkpoint": ([*py, "training.evaluate", "--checkpoint", str(f["root"] / "no.pth"),
                                          "--data", str(f["root"]), "--out", str(f["root"] / "eval")], "no.pth"),
        "infer_single: unsupported image": ([*py, "training.infer_single", "--checkpoint", str(ckpt), "--clinical",
                                             str(f["gif"])], "lesion.jpg"),
        "infer_single: missing image": ([*py, "training.infer_single", "--checkpoint", str(ckpt), "--clinical",
                                         str(f["missing"])], "missing.jpg"),
        "export: checkpoint of another format": ([*py, "training.export", "--checkpoint", str(f["foreign"]),
                                                  "--format", "state_dict", "--out", str(f["root"] / "x.pt")],
                                                 "resnet.pth"),
        "explain: missing image": ([*py, "training.explain", "--checkpoint", str(ckpt), "--clinical",
                                    str(f["missing"]), "--out", str(f["root"] / "explain")], "missing.jpg"),
        "weak_labels: missing folder": ([*py, "training.weak_labels", "--data", str(f["root"] / "nowhere")],
                                        "nowhere"),
        "synth: out is a file": ([*py, "training.synth", "--out", str(f["a_file"]), "--n", "2"], "not_a_folder"),
        "client: missing image": ([sys.executable, "scripts/client.py", "--clinical", str(f["missing"])],
                                  "missing.jpg"),
        "build_mar: checkpoint of another format": (["bash", "scripts/build_mar.sh", str(f["foreign"]),
                                                     str(f["root"] / "store")], "resnet.pth"),
        "build_mar: missing checkpoint": (["bash", "scripts/build_mar.sh", str(f["root"] / "no.pth")], "no.pth"),
    }


NAMES = list(cases({k: Path(k) for k in ("root", "gif", "foreign", "config", "a_file", "missing")}, Path("c")))


@pytest.mark.parametrize("name", NAMES)
def test_a_user_error_exits_2_with_one_line_naming_it_and_no_traceback(files, tiny_checkpoint, name):
    command, named = cases(files, tiny_checkpoint)[name]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert named in lines[0] and "Traceback" not in result.stderr


def test_a_bug_still_shows_its_traceback():
    code = "from model.cli import run\ndef main():\n    raise KeyError('a bug')\nrun(main)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                            check=False)
    assert result.returncode == 1 and "Traceback" in result.stderr and "KeyError" in result.stderr


def test_scripts_use_python_from_path_without_a_venv_and_honour_PYTHON(tmp_path):
    """scripts/python.sh, sourced by every scripts/*.sh: no .venv -> `python` on PATH; PYTHON= wins over both."""
    fake_root = tmp_path / "root"  # a checkout without .venv
    (fake_root / "scripts").mkdir(parents=True)
    (fake_root / "scripts" / "python.sh").write_text((ROOT / "scripts" / "python.sh").read_text())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    show = f'ROOT={fake_root}; source {fake_root}/scripts/python.sh; echo "$PY"'
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    from_path = subprocess.run(["bash", "-c", show], capture_output=True, text=True, env=env, check=False)
    assert from_path.stdout.strip() == str(bin_dir / "python"), from_path.stderr
    chosen = subprocess.run(["bash", "-c", show], capture_output=True, text=True, env={**env, "PYTHON": "/opt/py"},
                            check=False)
    assert chosen.stdout.strip() == "/opt/py"
    for script in ("build_mar.sh", "start_server.sh", "stop_server.sh", "scale_workers.sh", "quickstart.sh"):
        assert 'source "$ROOT/scripts/python.sh"' in (ROOT / "scripts" / script).read_text(), script
