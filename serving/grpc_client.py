"""Ask pigment for a score over TorchServe's gRPC inference API: the same handler and answers as REST, with a
cheaper way into the server.

TorchServe's REST frontend (Netty 4.1.53 in TorchServe 0.12) parses a multipart body one byte at a time; the gRPC
frontend reads the images as protobuf ``bytes`` fields, for a fraction of that CPU (docs/performance.md has the
measured cost per request of both). The gRPC server always runs next to REST, on
``grpc_inference_port`` (loopback only, see serve_config/config.properties), and checks the same inference key.

    python scripts/client.py --grpc --clinical a.jpg --dermoscopy b.jpg     # the command-line client

:func:`encode_request` builds the Predictions request once (a load generator re-sends it); :class:`GrpcClient`
sends it with the key and returns the HTTP status the request would have had over REST. TorchServe 0.12's gRPC
frontend answers a request the handler refused as an OK call whose body is the handler's error JSON; pigment's
error bodies carry their status (``{"error": ..., "field": ..., "status": 415}``), which is what the client
returns then. Errors of the server itself (a wrong key, an unknown model) are gRPC errors, mapped back to HTTP
statuses the way TorchServe maps them forward (PERMISSION_DENIED -> 403, ...).

The messages and the service stub are generated from TorchServe 0.12's own inference.proto (serving/proto/).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import grpc

from serving.proto import inference_pb2

_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["InferenceAPIsService"]
PREDICTIONS = f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name['Predictions'].name}"
"""The Predictions method's path, from the generated descriptor (the generated stub calls the same path)."""
MAX_MESSAGE_BYTES = 64 * 2**20  # above the server's max_request_size (32 MiB), so the server is the one to refuse
# gRPC status code -> the HTTP status TorchServe maps to it (the inverse of its GRPCUtils.getGRPCStatusCode)
HTTP_STATUS = {0: 200, 1: 499, 3: 400, 4: 504, 5: 404, 7: 403, 8: 413, 10: 409, 11: 416, 12: 501, 13: 500,
               14: 503, 16: 401}


def encode_request(model_name: str, inputs: Mapping[str, bytes], model_version: str = "") -> bytes:
    """A serialized ``PredictionsRequest``: ``inputs`` maps a field name (``clinical_image``, ...) to its bytes,
    exactly as the multipart fields of a REST request."""
    if not model_name:
        raise ValueError("model_name must not be empty: TorchServe routes the request by it")
    request = inference_pb2.PredictionsRequest(model_name=model_name, model_version=model_version,
                                               input={name: bytes(data) for name, data in inputs.items()})
    return request.SerializeToString()


def error_status(answer: bytes) -> int | None:
    """The status of a pigment error body (a JSON object with ``error`` and a 4xx/5xx ``status``), else None."""
    if not answer.startswith(b"{") or b'"error"' not in answer:
        return None
    try:
        body = json.loads(answer)
    except ValueError:
        return None
    status = body.get("status") if isinstance(body, dict) else None
    return status if isinstance(status, int) and 400 <= status < 600 and "error" in body else None


class GrpcClient:
    """One gRPC channel to TorchServe's inference server at ``target`` (``127.0.0.1:7070``)."""

    def __init__(self, target: str, max_message_bytes: int = MAX_MESSAGE_BYTES):
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", max_message_bytes),
                                                              ("grpc.max_receive_message_length", max_message_bytes)])
        # The generated stub's Predictions method, except that it takes the request already serialized: a load
        # generator sends the same encode_request bytes many times and should not re-encode megabytes each time.
        self._predict = self.channel.unary_unary(PREDICTIONS, request_serializer=None,
                                                 response_deserializer=inference_pb2.PredictionResponse.FromString)

    def predict(self, request: bytes, key: str, timeout: float = 60.0) -> tuple[int, bytes, str]:
        """Send an :func:`encode_request` message with the inference ``key``.

        Returns (the HTTP status REST would have answered, the handler's JSON answer or error body (b"" when the
        server refused the call itself), the gRPC error as ``"CODE: details"`` or "").
        """
        try:
            response = self._predict(request, timeout=timeout, metadata=[("authorization", f"Bearer {key}")])
        except grpc.RpcError as exc:
            code = exc.code()
            return HTTP_STATUS.get(code.value[0], 500), b"", f"{code.name}: {exc.details()}"
        answer = response.prediction
        return error_status(answer) or 200, answer, ""

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
