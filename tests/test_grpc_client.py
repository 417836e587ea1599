"""serving/grpc_client.py on the stubs generated from TorchServe's own inference.proto: the proto is TorchServe
0.12's, the committed stubs are what grpcio-tools generates from it now, and the client against an in-process gRPC
server built from the same generated servicer (key in the metadata, error bodies and gRPC errors as HTTP statuses).
The same client against a real TorchServe is in tests/test_serving.py."""

from __future__ import annotations

import json
import zipfile
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from serving.grpc_client import HTTP_STATUS, PREDICTIONS, GrpcClient, encode_request, error_status
from serving.proto import generate, inference_pb2, inference_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]


def _proto_body(text: str) -> str:
    """A .proto file from its ``syntax`` line on (our copy adds a provenance and license header above it)."""
    return text[text.index('syntax = "proto3";'):]


def test_the_kept_proto_is_the_one_inside_the_installed_torchserve():
    import ts

    jar = Path(ts.__file__).parent / "frontend" / "model-server.jar"
    with zipfile.ZipFile(jar) as archive:
        shipped = archive.read("proto/inference.proto").decode()
    kept = (ROOT / generate.PROTO).read_text()
    assert "Licensed under the Apache License, Version 2.0" in kept.split('syntax = "proto3";')[0]
    assert _proto_body(kept) == _proto_body(shipped)


def test_the_committed_stubs_are_what_grpcio_tools_generates_now(tmp_path):
    for fresh in generate.generate(tmp_path):
        committed = ROOT / generate.PROTO.parent / fresh.name
        assert committed.read_text() == fresh.read_text(), (
            f"{committed} is stale: regenerate with `python -m serving.proto.generate` and commit it")


def test_the_predictions_path_is_torchserves():
    assert PREDICTIONS == "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions"


def test_a_request_carries_the_model_and_every_input_unchanged():
    value = bytes(range(256)) * 3
    parsed = inference_pb2.PredictionsRequest.FromString(
        encode_request("pigment", {"clinical_image": value, "dermoscopy_image": b""}, model_version="2"))
    assert (parsed.model_name, parsed.model_version) == ("pigment", "2")
    assert dict(parsed.input) == {"clinical_image": value, "dermoscopy_image": b""}


def test_an_empty_model_name_is_refused():
    with pytest.raises(ValueError, match="model_name"):
        encode_request("", {"clinical_image": b"x"})


class _FakeTorchServe(inference_pb2_grpc.InferenceAPIsServiceServicer):
    """Answers like TorchServe 0.12: the handler's body (answer or error JSON) in an OK call; a wrong key aborts."""

    def Predictions(self, request, context):  # the generated servicer's method name
        if dict(context.invocation_metadata()).get("authorization") != "Bearer good-key":
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "Token Authorization failed")
        if "clinical_image" not in request.input:
            body = {"error": "clinical_image: is required", "field": "clinical_image", "status": 400}
        else:
            body = {"score": 0.25, "inputs": sorted(request.input), "model": request.model_name}
        return inference_pb2.PredictionResponse(prediction=json.dumps(body).encode())


@pytest.fixture
def fake_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    inference_pb2_grpc.add_InferenceAPIsServiceServicer_to_server(_FakeTorchServe(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


def test_the_client_sends_inputs_and_key_and_reads_the_answer(fake_server):
    with GrpcClient(fake_server) as client:
        status, answer, error = client.predict(encode_request("pigment", {"clinical_image": b"\xff\xd8"}),
                                               "good-key", timeout=10)
    assert (status, error) == (200, "")
    assert json.loads(answer) == {"score": 0.25, "inputs": ["clinical_image"], "model": "pigment"}


def test_a_refused_request_gets_the_status_its_error_body_names(fake_server):
    with GrpcClient(fake_server) as client:
        status, answer, _ = client.predict(encode_request("pigment", {"dermoscopy_image": b"x"}), "good-key", 10)
    assert status == 400 and json.loads(answer)["field"] == "clinical_image"


def test_a_wrong_key_is_the_403_torchserve_maps_permission_denied_from(fake_server):
    with GrpcClient(fake_server) as client:
        status, answer, error = client.predict(encode_request("pigment", {"clinical_image": b"x"}), "bad", 10)
    assert (status, answer) == (403, b"") and error.startswith("PERMISSION_DENIED")


def test_error_bodies_give_their_status_and_answers_give_none():
    error = {"error": "clinical_image: is required", "field": "clinical_image", "status": 400}
    assert error_status(json.dumps(error).encode()) == 400
    assert error_status(json.dumps({"score": 0.4, "severity": "Moderate"}).encode()) is None
    assert error_status(json.dumps({"error": "x", "status": 200}).encode()) is None
    assert error_status(b"{not json") is None


def test_grpc_codes_map_back_to_the_statuses_torchserve_maps_them_from():
    assert HTTP_STATUS[0] == 200 and HTTP_STATUS[3] == 400 and HTTP_STATUS[7] == 403 and HTTP_STATUS[5] == 404
    assert HTTP_STATUS[16] == 401 and HTTP_STATUS[14] == 503 and HTTP_STATUS[13] == 500
