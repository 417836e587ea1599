"""``training.predict --engine ray``: the same scoring on Ray Data, one model replica per worker process.

The lesions become a Ray Dataset of file paths; ``map_batches`` with a callable class on an actor pool of
``workers`` actors runs :class:`training.predict.Scorer` in each (the model is loaded once per actor, as a
TorchServe worker loads it once), reading the image files where the actor runs. The driver iterates the result
and writes rows as they arrive, so ``training.predict``'s resume works unchanged. Needs ``requirements-ray.txt``.

Cluster use (docs/deploy.md): the checkpoint and the images must be readable at the same paths on every node (a
shared file system); this repository's ``model``, ``handler`` and ``training`` packages are shipped to the workers
through the job's ``runtime_env`` (``py_modules``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from model.config import MODALITIES
from training.data import ScoringItem
from training.predict import Scorer, ScoringOptions, answer_row

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "handler", "training")
"""Our packages the workers import (shipped with the job, so a cluster needs only the requirements installed)."""


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ValueError("--engine ray needs Ray: pip install -r requirements-ray.txt") from None
    return ray


class RayScorer:
    """The callable class of ``map_batches``: one :class:`Scorer` per actor, answering numpy batches of paths."""

    def __init__(self, options: dict[str, Any]):
        self.scorer = Scorer(ScoringOptions(**options))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [_item(batch, i) for i in range(len(batch["lesion_id"]))]
        rows = [answer_row(item.lesion_id, answer) for item, answer in zip(items, self.scorer.score(items),
                                                                             strict=True)]
        return {"lesion_id": batch["lesion_id"], "row": np.array([json.dumps(r) for r in rows], dtype=object)}


def _record(item: ScoringItem) -> dict[str, str]:
    """A dataset row: plain strings only (empty = absent), so any node can rebuild the item."""
    files = {m: str(item.files[m].absolute()) if m in item.files else "" for m in MODALITIES}
    return {"lesion_id": item.lesion_id, **files,
            "error": item.error or "", "error_field": item.error_field}


def _item(batch: dict[str, np.ndarray], i: int) -> ScoringItem:
    files = {m: Path(str(batch[m][i])) for m in MODALITIES if str(batch[m][i])}
    error = str(batch["error"][i]) or None
    return ScoringItem(str(batch["lesion_id"][i]), files, error, str(batch["error_field"][i]))


def score(items: list[ScoringItem], options: ScoringOptions, workers: int, address: str | None = None,
          num_cpus: int | None = None) -> Iterator[list[dict[str, str]]]:
    """Rows, a batch at a time, in the order the actors finish them."""
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        runtime_env = {"py_modules": [str(ROOT / p) for p in PACKAGES]}
        if address:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # training.predict draws its own bar
    try:
        options = ScoringOptions(**{**vars(options), "checkpoint": str(Path(options.checkpoint).resolve())})
        threads = options.threads or 1
        dataset = ray.data.from_items([_record(item) for item in items]).map_batches(
            RayScorer, fn_constructor_kwargs={"options": {**vars(options), "threads": threads}},
            batch_size=options.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=threads)
        for batch in dataset.iter_batches(batch_size=options.batch_size, batch_format="numpy"):
            yield [json.loads(row) for row in batch["row"]]
    finally:
        if started_here:
            ray.shutdown()
