"""The bad-input corpus through the predictor alone: every case gets its documented status and names its field,
a batch mixing every case answers the good ones exactly as they are answered alone, and each "must work" input
(grayscale, CMYK, 16-bit, palette, EXIF-rotated, ...) scores like a plain RGB PNG of what it shows."""

from __future__ import annotations

import pytest

from handler.predictor import Predictor
from tests.bad_inputs import (
    CASES,
    GOOD,
    MUST_WORK,
    Case,
    equivalents,
    png,
    stored_pixels,
)


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint) -> Predictor:
    return Predictor(tiny_checkpoint)


def test_the_corpus_has_at_least_forty_cases_and_unique_names():
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_each_case_gets_its_documented_answer(predictor, case: Case):
    (answer,) = predictor.predict([case.predictor_request()])
    if case.status == 200:
        assert "error" not in answer, answer
        assert 0.0 <= answer["score"] <= 1.0
    else:
        assert answer["status"] == case.status, answer
        assert case.field in answer["field"], answer
        assert case.field in answer["error"], answer


def test_a_batch_of_every_case_answers_good_requests_as_if_alone(predictor):
    good = {"clinical_image": bytearray(GOOD)}
    (alone,) = predictor.predict([good])
    batch = []
    for case in CASES:
        batch += [case.predictor_request(), good]
    answers = predictor.predict(batch)
    assert len(answers) == len(batch)
    for case, bad, ok in zip(CASES, answers[0::2], answers[1::2]):
        assert ok["score"] == pytest.approx(alone["score"], abs=1e-4), case.name
        assert ("error" in bad) == (case.status != 200), case.name


EQUIVALENTS = equivalents()


def score_of(predictor: Predictor, data: bytes) -> float:
    (answer,) = predictor.predict([{"clinical_image": bytearray(data)}])
    assert "error" not in answer, answer
    return answer["score"]


def test_every_must_work_case_has_a_plain_rgb_equivalent():
    assert set(EQUIVALENTS) == set(MUST_WORK)
    assert set(MUST_WORK) <= {c.name for c in CASES if c.status == 200}


@pytest.mark.parametrize("name", list(EQUIVALENTS))
def test_a_must_work_input_scores_like_a_plain_rgb_png_of_what_it_shows(predictor, name):
    reference, tolerance = EQUIVALENTS[name]
    got, want = score_of(predictor, MUST_WORK[name]), score_of(predictor, reference)
    assert abs(got - want) <= tolerance, f"{name}: {got} vs {want} for the same picture in plain RGB"


def test_the_rotated_photo_check_can_tell_a_rotation_apart(predictor):
    """Guard on the check above: the stored (unrotated) pixels score measurably differently from the upright ones."""
    stored = png(stored_pixels(MUST_WORK["exif-rotated jpeg"], "RGB"))
    upright = EQUIVALENTS["exif-rotated jpeg"][0]
    assert abs(score_of(predictor, stored) - score_of(predictor, upright)) >= 10 * EQUIVALENTS["exif-rotated jpeg"][1]
