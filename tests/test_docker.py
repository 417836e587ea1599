"""docker/: what can be checked without a Docker engine (none runs on our machines).

Static: every file the Dockerfiles copy exists (or is the documented build output model_store/pigment.mar) and is
sent by .dockerignore; the CPU and GPU files differ only where they must; the container config is
serve_config/config.properties plus documented overrides (token authorization on, model API off); compose
publishes on the host's loopback only. For real: the entrypoint runs the documented torchserve command line
(against a stand-in ``torchserve``) and turns SIGTERM into ``torchserve --stop``; the health check passes against
a real TorchServe with token authorization and fails with a wrong, expired or missing key.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = [DOCKER / "Dockerfile.cpu", DOCKER / "Dockerfile.gpu"]
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
BUILD_OUTPUTS = {"model_store/pigment.mar": "scripts/build_mar.sh"}
"""COPY sources that a documented build step produces instead of git."""
CONTAINER_KEYS = {"inference_address", "management_address", "metrics_address", "model_store", "metrics_config"}
"""The keys docker/container.properties may override (docs/deploy.md lists them with the reasons)."""
SERVE_COMMAND = ("torchserve --start --foreground --ncs --ts-config /home/model-server/config.properties "
                 "--model-store /home/model-server/model-store --models pigment=pigment.mar")
"""What `docker run IMAGE` (CMD serve) runs; docs/deploy.md shows the same line."""


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """``[(INSTRUCTION, arguments)]`` with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def copy_sources(dockerfile: Path) -> list[str]:
    sources = []
    for op, args in instructions(dockerfile):
        if op in ("COPY", "ADD"):
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            assert "--from" not in args, f"{dockerfile.name}: COPY --from is not expected: {args}"
            sources += words[:-1]
    return sources


def read_properties(text: str) -> dict[str, str]:
    """Java Properties semantics for our files: ``key=value`` lines, a later key replaces an earlier one."""
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def container_config(tmp_path: Path) -> str:
    """The config.properties the Dockerfiles write, by the command they run."""
    out = tmp_path / "config.properties"
    subprocess.run([sys.executable, "-m", "serving.properties", str(ROOT / "serve_config" / "config.properties"),
                    str(DOCKER / "container.properties"), "-o", str(out)], cwd=ROOT, check=True)
    return out.read_text()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copied_file_exists_or_is_the_documented_archive(dockerfile):
    doc = DEPLOY_DOC.read_text()
    for source in copy_sources(dockerfile):
        if source in BUILD_OUTPUTS:
            assert BUILD_OUTPUTS[source] in doc and source in doc, f"{source}: its build step is not documented"
        else:
            assert (ROOT / source).is_file(), f"{dockerfile.name} copies {source}, which is not in the repository"


def test_dockerignore_sends_exactly_what_the_dockerfiles_copy():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "the context should start from nothing (the repo root holds .venv, data, keys)"
    allowed = {p[1:] for p in patterns[1:] if p.startswith("!")}
    copied = {s for d in DOCKERFILES for s in copy_sources(d)}
    assert allowed == copied
    assert not any(fnmatch.fnmatch(s, p) for s in copied for p in patterns[1:] if not p.startswith("!"))


def test_cpu_and_gpu_dockerfiles_differ_only_in_base_image_and_torch_index():
    cpu, gpu = (instructions(d) for d in DOCKERFILES)
    assert len(cpu) == len(gpu)
    differing = [(a, b) for a, b in zip(cpu, gpu, strict=True) if a != b]
    assert differing == [(("ARG", "BASE_IMAGE=pytorch/torchserve:0.12.0-cpu"),
                          ("ARG", "BASE_IMAGE=pytorch/torchserve:0.12.0-gpu")),
                         (("ARG", "TORCH_INDEX=https://download.pytorch.org/whl/cpu"),
                          ("ARG", "TORCH_INDEX=https://pypi.org/simple"))]


def test_the_image_runs_as_model_server_with_the_entrypoint_health_check_and_serve_command():
    ops = instructions(DOCKERFILES[0])
    runtime = ops[:[i for i, (op, _) in enumerate(ops) if op == "FROM"][1]]
    assert [args for op, args in runtime if op == "USER"][-1] == "model-server"
    assert [args for op, args in runtime if op == "WORKDIR"][-1] == "/home/model-server"  # where key_file.json goes
    assert json.loads(dict(runtime)["ENTRYPOINT"]) == ["/usr/local/bin/pigment-entrypoint"]
    assert json.loads(dict(runtime)["CMD"]) == ["serve"]
    assert dict(runtime)["HEALTHCHECK"].endswith('CMD ["python", "/usr/local/bin/pigment-healthcheck"]')
    stages = [args for op, args in ops if op == "FROM"]
    assert stages == ["${BASE_IMAGE} AS runtime", "runtime AS serve"]
    assert ("ARG", "BASE_IMAGE=pytorch/torchserve:0.12.0-cpu") in ops


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_image_installs_the_serving_set_of_pyproject_only(dockerfile):
    installs = [args for op, args in instructions(dockerfile) if op == "RUN" and "uv pip install" in args]
    assert len(installs) == 1
    commands = [c.strip() for c in installs[0].split("&&") if "uv pip install" in c]
    assert commands[-1].endswith("-r /tmp/pigment/pyproject.toml --extra serve")
    assert all("--extra" not in c and " -r " not in c for c in commands[:-1])  # only the torch pins before it
    assert "requirements.txt" not in dockerfile.read_text()


def test_container_config_keeps_token_auth_and_no_model_api_and_overrides_only_documented_keys(tmp_path):
    base = read_properties((ROOT / "serve_config" / "config.properties").read_text())
    overrides = read_properties((DOCKER / "container.properties").read_text())
    text = container_config(tmp_path)
    keys = [line.split("=", 1)[0] for line in text.splitlines() if "=" in line and not line.startswith("#")]
    assert len(keys) == len(set(keys)), "a key written twice: Java Properties would silently keep the last"
    effective = read_properties(text)
    assert set(overrides) == CONTAINER_KEYS
    assert {k for k in effective if effective[k] != base.get(k)} == CONTAINER_KEYS
    assert effective["disable_token_authorization"] == "false" and effective["enable_model_api"] == "false"
    assert effective["model_store"] == "/home/model-server/model-store"
    assert effective["metrics_config"] == "/home/model-server/metrics.yaml"
    assert all(effective[k].startswith("http://0.0.0.0:") for k in CONTAINER_KEYS if k.endswith("_address"))
    assert effective["grpc_inference_address"] == effective["grpc_management_address"] == "127.0.0.1"
    doc = DEPLOY_DOC.read_text()
    assert all(f"`{key}`" in doc for key in CONTAINER_KEYS), "docs/deploy.md should list every container override"


def test_nothing_in_docker_disables_token_authorization():
    for path in [*DOCKER.iterdir(), ROOT / ".dockerignore"]:
        code = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
        assert not any("disable-token-auth" in line or "disable_token_authorization=true" in line for line in code)


def test_compose_publishes_on_host_loopback_only_and_mounts_model_store_and_logs():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    service = compose["services"]["pigment"]
    assert service["ports"] and all(p.startswith("127.0.0.1:") for p in service["ports"])
    assert (DOCKER / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == DOCKERFILES[0]
    assert f"AS {service['build']['target']}" in DOCKERFILES[0].read_text()
    mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
    assert (DOCKER / mounts["/home/model-server/model-store"]).resolve() == ROOT / "model_store"
    assert "/home/model-server/logs" in mounts
    gpu = yaml.safe_load((DOCKER / "compose.gpu.yaml").read_text())["services"]["pigment"]
    assert (DOCKER / service["build"]["context"] / gpu["build"]["dockerfile"]).resolve() == DOCKERFILES[1]


# -- the entrypoint, run for real against a stand-in `torchserve` ---------------------------------------------------
FAKE_TORCHSERVE = """#!/bin/bash
echo "torchserve $*" >> "$FAKE_LOG"
if [[ " $* " == *" --stop "* ]]; then kill "$(cat "$FAKE_PID")"; exit 0; fi
echo $$ > "$FAKE_PID"
if [[ -n "${FAKE_SLEEP:-}" ]]; then exec sleep 30; fi
"""


@pytest.fixture
def fake_env(tmp_path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "torchserve").write_text(FAKE_TORCHSERVE)
    (bin_dir / "torchserve").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(tmp_path / "calls.log"),
            "FAKE_PID": str(tmp_path / "torchserve.pid")}


def calls(env: dict[str, str]) -> list[str]:
    return Path(env["FAKE_LOG"]).read_text().splitlines()


def test_the_default_command_runs_the_documented_torchserve_command_line(fake_env):
    subprocess.run(["bash", str(DOCKER / "entrypoint.sh")], env=fake_env, check=True, timeout=30)
    assert calls(fake_env) == [SERVE_COMMAND]
    assert SERVE_COMMAND in DEPLOY_DOC.read_text()


def test_a_kserve_runtime_command_runs_in_the_foreground(fake_env):
    args = ["torchserve", "--start", "--model-store=/mnt/models/model-store",
            "--ts-config=/mnt/models/config/config.properties"]
    subprocess.run(["bash", str(DOCKER / "entrypoint.sh"), *args], env=fake_env, check=True, timeout=30)
    assert calls(fake_env) == [" ".join(args + ["--foreground"])]


def test_other_commands_run_as_given(fake_env):
    result = subprocess.run(["bash", str(DOCKER / "entrypoint.sh"), "echo", "hello"], env=fake_env, check=False,
                            capture_output=True, text=True, timeout=30)
    assert result.stdout == "hello\n"


def test_docker_stop_becomes_torchserve_stop(fake_env):
    proc = subprocess.Popen(["bash", str(DOCKER / "entrypoint.sh")], env={**fake_env, "FAKE_SLEEP": "1"})
    deadline = time.monotonic() + 10
    while not Path(fake_env["FAKE_PID"]).is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    assert calls(fake_env) == [SERVE_COMMAND, "torchserve --stop"]


# -- the health check against a real TorchServe (the session server of tests/conftest.py) --------------------------
def healthcheck(url: str, key_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DOCKER / "healthcheck.py"), "--url", url, "--key-file", str(key_file)],
                          check=False, capture_output=True, text=True, timeout=30)


def test_the_health_check_passes_with_the_servers_inference_key(served):
    result = healthcheck(served.inference_url, served.key_file)
    assert result.returncode == 0, result.stdout
    assert "200 Healthy" in result.stdout


@pytest.mark.parametrize("expires, expected", [("2099-01-01T00:00:00Z", "rejected"),
                                               ("2020-01-01T00:00:00.123456789Z", "expired")])
def test_the_health_check_fails_with_a_wrong_or_expired_key(served, tmp_path, expires, expected):
    keys = json.loads(served.key_file.read_text())
    keys["inference"] = {"key": "wrong-key", "expiration time": expires}
    (tmp_path / "key_file.json").write_text(json.dumps(keys))
    result = healthcheck(served.inference_url, tmp_path / "key_file.json")
    assert result.returncode == 1 and expected in result.stdout
    if expected == "expired":
        assert "/token?type=inference" in result.stdout


def test_the_health_check_fails_without_a_key_file_or_server(served, tmp_path):
    missing = healthcheck(served.inference_url, tmp_path / "key_file.json")
    assert missing.returncode == 1 and "no usable inference key" in missing.stdout
    unreachable = healthcheck("http://127.0.0.1:9", served.key_file)
    assert unreachable.returncode == 1 and "unreachable" in unreachable.stdout
