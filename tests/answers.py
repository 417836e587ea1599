"""Comparing two answers (served vs offline): numbers within the documented tolerance, everything else equal."""

from __future__ import annotations

from typing import Any

ANSWER_TOLERANCE = 1e-4
"""Answers round scores, weights, interval ends, probabilities and OOD scores to 4 decimals; float noise across
batch compositions and FP32 transport (KServe v2) may move the last one."""


def assert_close_answer(served: dict[str, Any], expected: dict[str, Any], tol: float = ANSWER_TOLERANCE) -> None:
    """``served`` has ``expected``'s keys with every number within ``tol`` and every other value equal."""
    assert served.keys() == expected.keys(), (sorted(served), sorted(expected))
    _close(served, expected, tol, "answer")


def _close(a: Any, b: Any, tol: float, where: str) -> None:
    if isinstance(b, dict):
        assert isinstance(a, dict) and a.keys() == b.keys(), f"{where}: {a!r} != {b!r}"
        for key in b:
            _close(a[key], b[key], tol, f"{where}.{key}")
    elif isinstance(b, list):
        assert isinstance(a, list) and len(a) == len(b), f"{where}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, tol, f"{where}[{i}]")
    elif isinstance(b, float) and not isinstance(b, bool):
        assert isinstance(a, (int, float)) and abs(a - b) <= tol, f"{where}: {a!r} vs {b!r}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"
