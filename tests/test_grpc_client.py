"""scripts/grpc_client.py's protobuf wire format, checked against bytes written out by hand from the protobuf
encoding rules (tag = field number << 3 | wire type, lengths as base-128 varints). The same client against a real
TorchServe is in tests/test_serving.py."""

from __future__ import annotations

import json

import pytest

from scripts.grpc_client import HTTP_STATUS, decode_response, encode_request, error_status


def test_a_request_is_model_name_then_one_map_entry_per_input():
    encoded = encode_request("m", {"a": b"xy", "bc": b""})
    assert encoded == (b"\x0a\x01m"                          # field 1 (model_name), length 1
                       b"\x1a\x07" b"\x0a\x01a" b"\x12\x02xy"   # field 3 (input) entry: key "a", value b"xy"
                       b"\x1a\x06" b"\x0a\x02bc" b"\x12\x00")   # entry: key "bc", empty value


def test_a_model_version_is_field_2_and_long_values_get_multi_byte_lengths():
    value = bytes(range(256)) * 2  # 512 bytes: length varint 0x80 0x04
    encoded = encode_request("pigment", {"clinical_image": value}, model_version="2")
    head = b"\x0a\x07pigment" + b"\x12\x012"
    entry = b"\x0a\x0eclinical_image" + b"\x12\x80\x04" + value
    assert encoded == head + b"\x1a" + bytes([len(entry) & 0x7F | 0x80, len(entry) >> 7]) + entry


def test_an_empty_model_name_is_refused():
    with pytest.raises(ValueError, match="model_name"):
        encode_request("", {"clinical_image": b"x"})


def test_the_prediction_is_read_and_other_fields_are_skipped():
    answer = b'{"score": 0.5}'
    response = (b"\x12\x03abc"                      # sequence_id (2), a string
                + b"\x1a\x04\x08\x05\x12\x00"        # status (3), a message
                + b"\x20\x96\x01"                    # an unknown varint field (4) = 150
                + b"\x0a" + bytes([len(answer)]) + answer)
    assert decode_response(response) == answer
    assert decode_response(b"") == b""


@pytest.mark.parametrize("broken", [b"\x0a\x05abc", b"\x0a\xff", b"\x0b"], ids=["short-field", "short-varint",
                                                                                   "wire-type-3"])
def test_a_broken_response_is_an_error_not_a_wrong_answer(broken):
    with pytest.raises(ValueError):
        decode_response(broken)


def test_error_bodies_give_their_status_and_answers_give_none():
    error = {"error": "clinical_image: is required", "field": "clinical_image", "status": 400}
    assert error_status(json.dumps(error).encode()) == 400
    assert error_status(json.dumps({"score": 0.4, "severity": "Moderate"}).encode()) is None
    assert error_status(json.dumps({"error": "x", "status": 200}).encode()) is None
    assert error_status(b"{not json") is None


def test_grpc_codes_map_back_to_the_statuses_torchserve_maps_them_from():
    assert HTTP_STATUS[0] == 200 and HTTP_STATUS[3] == 400 and HTTP_STATUS[7] == 403 and HTTP_STATUS[5] == 404
    assert HTTP_STATUS[16] == 401 and HTTP_STATUS[14] == 503 and HTTP_STATUS[13] == 500
