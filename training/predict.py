"""Score a whole archive: ``python -m training.predict --checkpoint CKPT --data DIR|MANIFEST --out predictions.csv``.

DATA is a dataset folder in the documented layout or a manifest CSV (``training.import_data`` writes one from
Derm7pt or an ISIC download); labels are not needed. Each lesion is scored the way the server scores a request with
the same files (the one scoring path, ``model.scoring``), in batches, with a progress bar, and gets one row in
``--out``:

* ``lesion_id``, then every field of the server's answer, nested objects flattened with ``_`` (``attention`` ->
  ``attention_clinical``, ...; an ``interval`` object -> ``interval_low``, ...), lists of plain values joined with
  ``+`` (``modalities`` -> ``clinical+dermoscopy``), lists of objects as JSON. A field the answer gains later
  becomes a column without a code change; the file's header is widened when one first appears.
* A lesion that cannot be scored (no clinical image, a missing or unreadable file) gets a row with ``error``,
  ``error_field`` and ``error_status`` (the HTTP status the server would answer) instead of stopping the run.

Resumable: an existing ``--out`` is appended to, and lesions whose id it already holds (scored or failed) are
skipped, so a run killed halfway and started again scores every lesion exactly once (a row cut off by the kill is
removed first). Delete a lesion's row to score it again.

``--engine ray`` runs the same scoring on a Ray cluster (``pip install -r requirements-ray.txt``): one model replica
per worker process (``--workers``), image files read by the workers (they must see the same paths), rows written
here as they arrive. ``--ray-address`` joins a running cluster; without it a local Ray instance is started
(docs/deploy.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from model import scoring
from model.accelerate import BACKENDS, accelerate
from model.answer import SCORE_DECIMALS
from model.checkpoint import load_for_inference
from model.preprocessing import InputError
from training.data import ScoringItem, index_for_scoring

log = logging.getLogger("training.predict")

ID_COLUMN = "lesion_id"
ERROR_COLUMNS = ("error", "error_field", "error_status")


@dataclass(frozen=True)
class ScoringOptions:
    """How each engine's replicas score: what a TorchServe worker's ``handler:`` section would say."""

    checkpoint: str
    backend: str = "eager_fp32"
    simulate_multispectral: bool = False
    threads: int = 0  # torch threads per replica; 0: all this process's cores
    batch_size: int = 8


# ---------------------------------------------------------------------------------------------------------------
# One replica: files -> answers
# ---------------------------------------------------------------------------------------------------------------


class Scorer:
    """One model replica answering lesions given as files, through the one scoring path (``model.scoring``) with
    the server's settings: the same preparation, batched forward, answer and rounding as a TorchServe worker."""

    def __init__(self, options: ScoringOptions):
        if options.threads:
            torch.set_num_threads(options.threads)
        self.options = options
        self.loaded = load_for_inference(options.checkpoint)
        accelerate(self.loaded.model, options.backend, options.batch_size, threads=torch.get_num_threads())

    def score(self, items: list[ScoringItem]) -> list[dict[str, Any]]:
        """One answer (or error body) per item, in order; a failure of one item never fails the others."""
        prepared = [self._prepare(item) for item in items]
        samples = [p for p in prepared if isinstance(p, scoring.Sample)]
        answers = iter(self._answer(samples))
        return [next(answers) if isinstance(p, scoring.Sample) else p for p in prepared]

    def _prepare(self, item: ScoringItem) -> scoring.Sample | dict[str, Any]:
        if item.error is not None:
            return {"error": item.error, "field": item.error_field, "status": 400}
        fields = {str(path): f"{m}_image" for m, path in item.files.items()}
        try:
            return scoring.prepare_files(item.files, self.loaded.data_cfg,
                                         simulate_multispectral=self.options.simulate_multispectral)
        except InputError as error:  # named by file path; the row says which request field that is
            return {"error": str(error), "field": fields.get(error.field, error.field), "status": error.status}

    def _answer(self, samples: list[scoring.Sample]) -> list[dict[str, Any]]:
        if not samples:
            return []
        try:
            return scoring.score(self.loaded, samples, decimals=SCORE_DECIMALS)
        except Exception as exc:  # one lesion's unexpected failure must not lose the batch
            if len(samples) == 1:
                log.exception("scoring failed")
                return [{"error": f"scoring failed: {exc!r}", "field": "", "status": 500}]
            return [answer for sample in samples for answer in self._answer([sample])]


# ---------------------------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------------------------


def answer_row(lesion_id: str, answer: dict[str, Any]) -> dict[str, str]:
    """The CSV row of one answer: every field flattened (see the module docstring); an error body's keys are
    ``error``, ``error_field`` and ``error_status``."""
    if "error" in answer and "score" not in answer:
        answer = {"error": answer["error"], "error_field": answer.get("field", ""),
                  "error_status": answer.get("status", "")}
    return {ID_COLUMN: lesion_id, **flatten(answer)}


def flatten(value: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, dict):
            out.update(flatten(item, f"{name}_"))
        else:
            out[name] = cell(item)
    return out


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, (str, int, float, bool)) for v in value):
            return "+".join(str(v) for v in value)
        return json.dumps(value, separators=(",", ":"))
    return str(value)


class ResultsFile:
    """The predictions CSV: the ids it holds, and appending rows with a header that grows with new fields."""

    def __init__(self, path: Path):
        self.path = path
        self.columns: list[str] = []
        self.done: set[str] = set()
        if path.is_file() and path.stat().st_size:
            self._drop_partial_last_line()
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or [])
                if ID_COLUMN not in self.columns:
                    raise ValueError(f"{path}: not a predictions file (no {ID_COLUMN} column); choose another "
                                     f"--out")
                self.done = {row[ID_COLUMN] for row in reader}
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", newline="")
        self._writer: csv.DictWriter | None = None

    def write(self, rows: list[dict[str, str]]) -> None:
        """Append ``rows`` and flush them to the OS, so a kill after this call loses none of them."""
        new = [k for row in rows for k in row if k not in self.columns]
        if new:
            self._widen(list(dict.fromkeys(new)))
        if self._writer is None:
            self._writer = csv.DictWriter(self._file, fieldnames=self.columns, lineterminator="\n")
        self._writer.writerows(rows)
        self._file.flush()
        self.done.update(row[ID_COLUMN] for row in rows)

    def close(self) -> None:
        self._file.close()

    def _widen(self, new: list[str]) -> None:
        """Rewrite the file with ``new`` columns added (empty in the rows already written); error columns last."""
        self._file.close()
        old = []
        if self.columns:
            with self.path.open(newline="") as f:
                old = list(csv.DictReader(f))
        fields = [c for c in (*self.columns, *new) if c not in ERROR_COLUMNS and c != ID_COLUMN]
        errors = [c for c in ERROR_COLUMNS if c in self.columns or c in new]
        self.columns = [ID_COLUMN, *dict.fromkeys(fields), *errors]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(old)
        os.replace(tmp, self.path)
        self._file = self.path.open("a", newline="")
        self._writer = None

    def _drop_partial_last_line(self) -> None:
        """A kill can leave half a row: cut the file back to its last complete line."""
        with self.path.open("rb+") as f:
            data = f.read()
            if data.endswith(b"\n"):
                return
            cut = data.rfind(b"\n") + 1
            log.warning("%s: removing an incomplete last row (%d bytes) left by an interrupted run", self.path,
                        len(data) - cut)
            f.truncate(cut)


# ---------------------------------------------------------------------------------------------------------------
# Engines
# ---------------------------------------------------------------------------------------------------------------


def batches(items: list[ScoringItem], size: int) -> Iterator[list[ScoringItem]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def score_local(items: list[ScoringItem], options: ScoringOptions,
                scorer: Scorer | None = None) -> Iterator[list[dict[str, str]]]:
    """Rows, a batch at a time, scored in this process (by ``scorer``, else a new one)."""
    scorer = scorer or Scorer(options)
    for batch in batches(items, options.batch_size):
        yield [answer_row(item.lesion_id, answer) for item, answer in zip(batch, scorer.score(batch), strict=True)]


def score_ray(items: list[ScoringItem], options: ScoringOptions, workers: int, address: str | None,
              num_cpus: int | None) -> Iterator[list[dict[str, str]]]:
    """Rows as they arrive from a Ray Data pipeline with ``workers`` model replicas (one actor each)."""
    from training import ray_engine  # Ray is an optional dependency

    yield from ray_engine.score(items, options, workers, address, num_cpus)


def run(items: list[ScoringItem], results: ResultsFile, rows: Iterable[list[dict[str, str]]],
        progress: bool = True) -> int:
    """Write every batch of ``rows`` as it comes; returns the number of rows written."""
    written = 0
    with tqdm(total=len(items), unit="lesion", desc="scoring", disable=not progress) as bar:
        for batch in rows:
            results.write(batch)
            written += len(batch)
            bar.update(len(batch))
    return written


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="e.g. RUN_DIR/best_model.pth")
    p.add_argument("--data", type=Path, required=True, help="dataset folder or manifest .csv")
    p.add_argument("--out", type=Path, required=True, help="predictions CSV (appended to, see resuming)")
    p.add_argument("--batch-size", type=int, default=8, help="lesions per forward (default 8)")
    p.add_argument("--backend", choices=BACKENDS, default="eager_fp32", help="how the encoders run")
    p.add_argument("--threads", type=int, default=0, help="torch threads per replica (0: all cores locally)")
    p.add_argument("--simulate-multispectral", action="store_true",
                   help="without a multispectral image, simulate the view as training does")
    p.add_argument("--engine", choices=("local", "ray"), default="local")
    p.add_argument("--workers", type=int, default=2, help="--engine ray: model replicas (default 2)")
    p.add_argument("--ray-address", help="--engine ray: a running cluster (e.g. ray://head:10001 or auto)")
    p.add_argument("--ray-num-cpus", type=int, help="--engine ray without --ray-address: CPUs of the local instance")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        items, results = _inputs(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"predict: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    todo = [item for item in items if item.lesion_id not in results.done]
    if len(todo) < len(items):
        log.info("%s already holds %d of the %d lesions; scoring the other %d", args.out, len(items) - len(todo),
                 len(items), len(todo))
    options = ScoringOptions(str(args.checkpoint), args.backend, args.simulate_multispectral, args.threads,
                             args.batch_size)
    try:
        rows = score_local(todo, options) if args.engine == "local" else \
            score_ray(todo, options, args.workers, args.ray_address, args.ray_num_cpus)
        written = run(todo, results, rows, progress=not args.quiet) if todo else 0
    finally:
        results.close()
    print(f"predict: {written} lesions scored -> {args.out} ({len(items) - len(todo)} were already there)")
    return written


def _inputs(args: argparse.Namespace) -> tuple[list[ScoringItem], ResultsFile]:
    if not args.checkpoint.is_file():
        raise FileNotFoundError(f"{args.checkpoint}: no such checkpoint; train one with `python -m training.train`")
    if args.batch_size < 1 or args.workers < 1 or args.threads < 0:
        raise ValueError("--batch-size and --workers must be >= 1, --threads >= 0")
    return index_for_scoring(args.data), ResultsFile(args.out)

if __name__ == "__main__":
    main()
