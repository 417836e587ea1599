"""Lay out a KServe storageUri folder for the TorchServe runtime (open inference protocol v2).

    python kserve/layout.py runs/demo/best_model.pth kserve_storage    # build the archive from a checkpoint
    python kserve/layout.py model_store/pigment.mar kserve_storage     # or copy an archive built with batchSize 1

(kserve/layout.py is this module's command line.)

writes::

    STORAGE/config/config.properties    serve_config/config.properties + the KSERVE_OVERRIDES below
    STORAGE/config/metrics.yaml         serve_config/metrics.yaml (declares pigment's custom metrics)
    STORAGE/model-store/pigment.mar     serving.archive.build_mar with batchSize 1

Upload STORAGE (e.g. ``gsutil cp -r STORAGE gs://bucket/pigment``) and point the InferenceService's storageUri at
it (kserve/inferenceservice-torchserve.yaml). KServe mounts it at /mnt/models and starts
``torchserve --start --model-store=/mnt/models/model-store --ts-config=/mnt/models/config/config.properties``.

batchSize is 1 and this script refuses anything else: TorchServe's kservev2 envelope parses only the first request
of a batch and returns one response for all of them (pytorch/serve#2158), so with batchSize > 1 concurrent v2
requests fail. Scale with workers (``--workers``) or replicas instead.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import zipfile
from pathlib import Path

import yaml

from serving.archive import MAR, MODEL_CONFIG, MODEL_NAME, SERVE_CONFIG, build_mar, model_config
from serving.properties import merged_properties

MOUNT = "/mnt/models"
"""Where KServe's storage initializer puts the storageUri's contents in the predictor container."""

KSERVE_OVERRIDES: dict[str, tuple[str, str]] = {
    "inference_address": ("http://0.0.0.0:8080", "KServe sends traffic to the container's port 8080"),
    "metrics_address": ("http://0.0.0.0:8082", "scraped on 8082 (the runtime's prometheus.kserve.io/port)"),
    "disable_token_authorization": ("true", ("KServe's clients and probes cannot present the random per-pod key in "
                                             "key_file.json; authentication belongs to the cluster's ingress/mesh")),
    "enable_envvars_config": ("true", "the runtime sets TS_SERVICE_ENVELOPE from protocolVersion (v2 -> kservev2)"),
    "service_envelope": ("kservev2", "pigment speaks the open inference protocol v2 (handler/kserve_v2.py)"),
    "model_store": (f"{MOUNT}/model-store", "where KServe mounts the storageUri"),
    "metrics_config": (f"{MOUNT}/config/metrics.yaml", "declares pigment's custom metrics"),
}
"""Keys of config/config.properties that differ from serve_config/config.properties (value, why); management and
gRPC stay on loopback; model_snapshot is added."""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return lay_out(args)
    except (FileNotFoundError, ValueError) as exc:  # a missing or unservable checkpoint, a batchSize > 1 archive
        print(f"kserve/layout.py: {exc}", file=sys.stderr)
        return 2


def lay_out(args: argparse.Namespace) -> int:
    """Fill ``args.storage`` (see the module docstring)."""
    if not Path(args.source).is_file():
        raise FileNotFoundError(f"{args.source}: no such checkpoint or archive")
    storage = Path(args.storage)
    (storage / "config").mkdir(parents=True, exist_ok=True)
    (storage / "model-store").mkdir(parents=True, exist_ok=True)
    config = kserve_model_config(args.model_config, args.workers, args.device)
    mar = storage / "model-store" / MAR
    if args.source.endswith(".mar"):
        shutil.copyfile(args.source, mar)
    else:
        build_mar(Path(args.source), mar.parent, config)
    version = archive_version(mar)
    write_config(storage / "config" / "config.properties", snapshot(version, config))
    shutil.copyfile(SERVE_CONFIG / "metrics.yaml", storage / "config" / "metrics.yaml")
    print(f"wrote {storage}/: config/config.properties, config/metrics.yaml, model-store/{MAR} "
          f"(model version {version}, batchSize 1, {config['minWorkers']}-{config['maxWorkers']} "
          f"workers, {args.device})")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a pigment checkpoint (.pth), or a pigment.mar built with batchSize 1")
    parser.add_argument("storage", help="the folder to fill (created if missing)")
    parser.add_argument("--workers", type=int, default=None,
                        help="workers per pod (minWorkers = maxWorkers); default: serve_config/model-config.yaml's")
    parser.add_argument("--model-config", type=Path, default=MODEL_CONFIG,
                        help="the archive's model-config.yaml before batchSize/workers/device are set")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="deviceType of the archive; gpu needs a GPU image (docker/Dockerfile.gpu) and node")
    return parser.parse_args(argv)


def kserve_model_config(path: Path, workers: int | None, device: str) -> dict:
    """The model-config.yaml at ``path`` with batchSize 1 (and the requested workers and device)."""
    workers_set = {} if workers is None else {"minWorkers": workers, "maxWorkers": workers}
    return model_config(path, batchSize=1, deviceType=device, **workers_set)


def archive_version(mar: Path) -> str:
    """The archive's model version (its MANIFEST.json); the snapshot must register exactly that version.

    Raises:
        ValueError: the archive's model-config.yaml asks for batchSize > 1 (see the module docstring).
    """
    with zipfile.ZipFile(mar) as archive:
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        config_name = manifest["model"].get("configFile")
        batch = yaml.safe_load(archive.read(config_name)).get("batchSize", 1) if config_name else 1
    if int(batch) != 1:
        raise ValueError(f"{mar}: its model-config.yaml has batchSize {batch}; TorchServe's kservev2 envelope "
                         f"needs batchSize 1 (pytorch/serve#2158). Pass the checkpoint instead and this script "
                         f"builds the archive with batchSize 1")
    return manifest["model"]["modelVersion"]


def snapshot(version: str, config: dict) -> dict:
    """TorchServe's startup snapshot registering pigment (KServe's runtime passes no --models)."""
    entry = {"defaultVersion": True, "marName": MAR, "minWorkers": config["minWorkers"],
             "maxWorkers": config["maxWorkers"], "batchSize": 1,
             "maxBatchDelay": config["maxBatchDelay"], "responseTimeout": config["responseTimeout"]}
    return {"name": "startup.cfg", "modelCount": 1, "models": {MODEL_NAME: {version: entry}}}


def write_config(path: Path, model_snapshot: dict) -> None:
    """serve_config/config.properties with KSERVE_OVERRIDES and the snapshot (:mod:`serving.properties`)."""
    overrides = {key: value for key, (value, _) in KSERVE_OVERRIDES.items()}
    reasons = {key: why for key, (_, why) in KSERVE_OVERRIDES.items()}
    overrides["model_snapshot"] = json.dumps(model_snapshot, separators=(",", ":"))
    reasons["model_snapshot"] = ("TorchServe registers pigment from this snapshot (the runtime passes no --models); "
                                 "batchSize must be 1")
    path.write_text(merged_properties((SERVE_CONFIG / "config.properties").read_text(), overrides,
                                      "Set by kserve/layout.py for KServe (docs/deploy.md); they replace the values "
                                      "above", reasons))


if __name__ == "__main__":
    sys.exit(main())
