"""A bounded load generator for a pigment TorchServe on loopback: N requests (or T seconds) at concurrency C.

Every run is bounded twice, by a request count and by a wall-clock limit, and only talks to 127.0.0.1/localhost.
Bodies are multipart-encoded once up front, so the client spends its (shared) CPU on sending, not encoding.

    python -m benchmarks.loadgen --run-dir logs --clinical a.jpg --dermoscopy b.jpg --requests 2000 --concurrency 16

As a library (the benchmark, tests/soak): :func:`run_load` returns one :class:`Result` per request, with start/end
times, status and the parsed answer; :func:`load_summary` gives counts, latency percentiles and throughput.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import requests

from model.config import MODALITIES
from serving.grpc_client import GrpcClient, encode_request
from serving.torchserve import LocalTorchServe

LOOPBACK = ("127.0.0.1", "localhost", "::1")
GRPC_CONTENT_TYPE = "application/grpc"


@dataclass(frozen=True)
class Body:
    """One pre-encoded request: multipart bytes and their Content-Type (with the boundary)."""

    data: bytes
    content_type: str

    @classmethod
    def multipart(cls, parts: Sequence[tuple[str, bytes]]) -> Body:
        """``[(field, file bytes), ...]`` -> multipart/form-data, each part a file named after its field."""
        boundary = uuid.uuid4().hex
        chunks = []
        for name, data in parts:
            chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}"\r\n'
                          f"Content-Type: application/octet-stream\r\n\r\n".encode())
            chunks += [data, b"\r\n"]
        chunks.append(f"--{boundary}--\r\n".encode())
        return cls(b"".join(chunks), f"multipart/form-data; boundary={boundary}")

    @classmethod
    def grpc(cls, model_name: str, parts: Sequence[tuple[str, bytes]]) -> Body:
        """The same fields as one serialized gRPC ``PredictionsRequest`` (serving/grpc_client.py), for a
        ``grpc://127.0.0.1:PORT`` target."""
        return cls(encode_request(model_name, dict(parts)), GRPC_CONTENT_TYPE)


@dataclass
class Result:
    """One request's outcome: which body (index into the pool), when, HTTP status (0 = no answer) and answer."""

    seq: int
    body: int
    start: float
    end: float
    status: int
    answer: dict | None = None
    error: str = ""

    @property
    def latency(self) -> float:
        return self.end - self.start


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname
    if host not in LOOPBACK:
        raise ValueError(f"{url}: the load generator only sends to loopback ({', '.join(LOOPBACK)})")


def run_load(url: str, bodies: Sequence[Body], total: int, concurrency: int, max_seconds: float,
             headers: Callable[[], dict[str, str]] | dict[str, str] | None = None, timeout: float = 60.0,
             stop: threading.Event | None = None, pick: Callable[[int], int] | None = None,
             on_result: Callable[[Result], None] | None = None) -> list[Result]:
    """Send ``total`` requests (body ``pick(seq)``, default ``seq % len(bodies)``) from ``concurrency`` threads.

    ``url`` is a REST predictions URL (``http://127.0.0.1:8080/predictions/pigment``, multipart bodies) or a gRPC
    inference server (``grpc://127.0.0.1:7070``, :meth:`Body.grpc` bodies; a gRPC error is recorded with the HTTP
    status TorchServe maps it to).

    Stops early after ``max_seconds`` or when ``stop`` is set; requests not sent are simply absent from the
    result. ``headers`` may be a callable so that a key refreshed mid-run is picked up. ``on_result`` is called
    with each result as it arrives, one call at a time (a progress bar).
    """
    check_loopback(url)
    if total < 1 or concurrency < 1 or max_seconds <= 0:
        raise ValueError("total, concurrency and max_seconds must be positive")
    pick = pick or (lambda seq: seq % len(bodies))
    stop = stop or threading.Event()
    deadline = time.monotonic() + max_seconds
    counter = iter(range(total))
    lock = threading.Lock()
    results: list[Result] = []

    def next_seq() -> int | None:
        if stop.is_set() or time.monotonic() >= deadline:
            return None
        with lock:
            return next(counter, None)

    def worker() -> None:
        send = _GrpcSender(url, timeout) if url.startswith("grpc://") else _HttpSender(url, timeout)
        local: list[Result] = []
        try:
            while (seq := next_seq()) is not None:
                body = bodies[pick(seq)]
                extra = headers() if callable(headers) else dict(headers or {})
                start = time.monotonic()
                status, text, error = send(body, extra)
                local.append(Result(seq, pick(seq), start, time.monotonic(), status, _json(text), error))
                if on_result is not None:
                    with lock:
                        on_result(local[-1])
        finally:
            send.close()
            with lock:
                results.extend(local)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max_seconds + timeout + 10)
    return sorted(results, key=lambda r: r.seq)


class _HttpSender:
    """POSTs bodies over one keep-alive connection: (status, text, error)."""

    def __init__(self, url: str, timeout: float):
        self.url, self.timeout, self.session = url, timeout, requests.Session()

    def __call__(self, body: Body, headers: dict[str, str]) -> tuple[int, str, str]:
        try:
            response = self.session.post(self.url, data=body.data, timeout=self.timeout,
                                         headers={**headers, "Content-Type": body.content_type})
        except requests.RequestException as exc:
            return 0, "", f"{type(exc).__name__}: {exc}"
        return response.status_code, response.text, ""

    def close(self) -> None:
        self.session.close()


class _GrpcSender:
    """Sends :meth:`Body.grpc` bodies over one gRPC channel, the key taken from the Authorization header."""

    def __init__(self, url: str, timeout: float):
        self.timeout, self.client = timeout, GrpcClient(urlparse(url).netloc)

    def __call__(self, body: Body, headers: dict[str, str]) -> tuple[int, str, str]:
        if body.content_type != GRPC_CONTENT_TYPE:
            raise ValueError(f"a grpc:// target needs Body.grpc bodies, got {body.content_type!r}")
        key = headers.get("Authorization", "").removeprefix("Bearer ")
        status, answer, error = self.client.predict(body.data, key, self.timeout)
        return status, answer.decode(errors="replace"), error

    def close(self) -> None:
        self.client.close()


def _json(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def load_summary(results: Sequence[Result], wall: float | None = None, concurrency: int | None = None) -> dict:
    """One load run in numbers: requests, answered (2xx) and errors by status (or error kind when nothing
    answered), counts per status class, throughput of answered requests over ``wall`` seconds (default: first send
    to last answer), latency percentiles of answered requests (ms) and, given the ``concurrency``, the
    :func:`steady_rate`."""
    if not results:
        return {"requests": 0, "ok": 0}
    ok = [r for r in results if 200 <= r.status < 300]
    wall = wall if wall is not None else max(r.end for r in results) - min(r.start for r in results)
    latencies = [1000 * r.latency for r in ok]
    errors = Counter(str(r.status or r.error.split(":")[0]) for r in results if not 200 <= r.status < 300)
    summary = {"requests": len(results), "ok": len(ok), "errors": dict(errors),
               "4xx": sum(400 <= r.status < 500 for r in results), "5xx": sum(r.status >= 500 for r in results),
               "no_answer": sum(r.status == 0 for r in results), "wall_s": round(wall, 2),
               "throughput_rps": round(len(ok) / wall, 2) if wall > 0 else 0.0,
               **{f"p{q}_ms": round(percentile(latencies, q), 1) if ok else None for q in (50, 90, 99)}}
    if concurrency is not None:
        summary.update(concurrency=concurrency, steady_rps=steady_rate(results, concurrency))
    return summary


def steady_rate(results: list[Result], concurrency: int) -> float | None:
    """Answers per second between the ``concurrency``-th answer and the ``concurrency``-th from last.

    A closed-loop load starts with every client waiting on the first batches and ends with workers idling while
    the last requests drain; a server that keeps serving has neither. Between those two points every client has a
    request in flight. None when there are fewer than ``3 * concurrency`` answers.
    """
    ends = sorted(r.end for r in results if 200 <= r.status < 300)
    if len(ends) < 3 * concurrency:
        return None
    first, last = ends[concurrency - 1], ends[-concurrency]
    if last <= first:
        return None
    return round(sum(first < end <= last for end in ends) / (last - first), 2)  # answers come in batches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="logs", help="the server's run dir (ports and key_file.json)")
    parser.add_argument("--clinical", type=Path, required=True)
    parser.add_argument("--dermoscopy", type=Path)
    parser.add_argument("--multispectral", type=Path)
    parser.add_argument("--requests", type=int, default=1000, help="at most this many requests (default 1000)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=300.0, help="and at most this long (default 300)")
    parser.add_argument("--grpc", action="store_true", help="send over TorchServe's gRPC inference API")
    args = parser.parse_args(argv)
    server = LocalTorchServe.from_run_dir(args.run_dir)
    parts = [(f"{m}_image", path.read_bytes()) for m in MODALITIES
             if (path := getattr(args, m)) is not None]
    if args.grpc:
        url, body = f"grpc://127.0.0.1:{server.ports.grpc_inference}", Body.grpc(server.model_name, parts)
    else:
        url, body = f"{server.inference_url}/predictions/{server.model_name}", Body.multipart(parts)
    results = run_load(url, [body], args.requests, args.concurrency, args.max_seconds,
                       headers=server.auth("inference"))
    print(json.dumps(load_summary(results, concurrency=args.concurrency), indent=2))
    return 0 if all(200 <= r.status < 300 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
