"""The bad-input corpus through the predictor alone: every case gets its documented status and names its field,
and a batch mixing every case answers the good ones exactly as they are answered alone."""

from __future__ import annotations

import pytest

from handler.predictor import Predictor
from tests.bad_inputs import CASES, GOOD, Case


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
