"""Ask pigment for a score over TorchServe's gRPC inference API: the same handler and answers as REST, with a
cheaper way into the server.

TorchServe's REST frontend (Netty 4.1.53 in TorchServe 0.12) parses a multipart body one byte at a time, about
15 ms of CPU per three-image request on this project's 2-core machine; the gRPC frontend reads the images as
protobuf ``bytes`` fields for a few ms (docs/performance.md). The gRPC server always runs next to REST, on
``grpc_inference_port`` (loopback only, see serve_config/config.properties), and checks the same inference key.

    python scripts/client.py --grpc --clinical a.jpg --dermoscopy b.jpg     # the command-line client

:func:`encode_request` builds the Predictions request once (a load generator re-sends it); :class:`GrpcClient`
sends it with the key and returns the HTTP status the request would have had over REST. TorchServe 0.12's gRPC
frontend answers a request the handler refused as an OK call whose body is the handler's error JSON; pigment's
error bodies carry their status (``{"error": ..., "field": ..., "status": 415}``), which is what the client
returns then. Errors of the server itself (a wrong key, an unknown model) are gRPC errors, mapped back to HTTP
statuses the way TorchServe maps them forward (PERMISSION_DENIED -> 403, ...).

The two messages involved, from TorchServe's inference.proto::

    PredictionsRequest {string model_name = 1; string model_version = 2; map<string, bytes> input = 3; ...}
    PredictionResponse {bytes prediction = 1; ...}

are written and read here in protobuf's wire format directly, so a client needs grpcio and nothing generated.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

PREDICTIONS = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions"
MAX_MESSAGE_BYTES = 64 * 2**20  # above the server's max_request_size (32 MiB), so the server is the one to refuse
# gRPC status code -> the HTTP status TorchServe maps to it (the inverse of its GRPCUtils.getGRPCStatusCode)
HTTP_STATUS = {0: 200, 1: 499, 3: 400, 4: 504, 5: 404, 7: 403, 8: 413, 10: 409, 11: 416, 12: 501, 13: 500,
               14: 503, 16: 401}

_LENGTH_DELIMITED = 2


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | _LENGTH_DELIMITED) + _varint(len(payload)) + payload


def encode_request(model_name: str, inputs: Mapping[str, bytes], model_version: str = "") -> bytes:
    """A serialized ``PredictionsRequest``: ``inputs`` maps a field name (``clinical_image``, ...) to its bytes,
    exactly as the multipart fields of a REST request."""
    if not model_name:
        raise ValueError("model_name must not be empty: TorchServe routes the request by it")
    out = [_field(1, model_name.encode())]
    if model_version:
        out.append(_field(2, model_version.encode()))
    for name, data in inputs.items():
        out.append(_field(3, _field(1, name.encode()) + _field(2, bytes(data))))  # one map entry per input
    return b"".join(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated protobuf message: a varint runs past the end")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def decode_response(data: bytes) -> bytes:
    """The ``prediction`` field of a serialized ``PredictionResponse`` (b"" when absent); other fields skipped."""
    pos, prediction = 0, b""
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _read_varint(data, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == _LENGTH_DELIMITED:
            size, pos = _read_varint(data, pos)
            if pos + size > len(data):
                raise ValueError("truncated protobuf message: a field runs past the end")
            if number == 1:
                prediction = data[pos:pos + size]
            pos += size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type} in a PredictionResponse")
    return prediction


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
        import grpc  # here, so that encode/decode work without grpcio installed

        self._grpc = grpc
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", max_message_bytes),
                                                              ("grpc.max_receive_message_length", max_message_bytes)])
        self._predict = self.channel.unary_unary(PREDICTIONS)  # bytes in, bytes out: no serializer needed

    def predict(self, request: bytes, key: str, timeout: float = 60.0) -> tuple[int, bytes, str]:
        """Send an :func:`encode_request` message with the inference ``key``.

        Returns (the HTTP status REST would have answered, the handler's JSON answer or error body (b"" when the
        server refused the call itself), the gRPC error as ``"CODE: details"`` or "").
        """
        try:
            response = self._predict(request, timeout=timeout, metadata=[("authorization", f"Bearer {key}")])
        except self._grpc.RpcError as exc:
            code = exc.code()
            return HTTP_STATUS.get(code.value[0], 500), b"", f"{code.name}: {exc.details()}"
        answer = decode_response(response)
        return error_status(answer) or 200, answer, ""

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
