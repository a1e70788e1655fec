"""The control protocol's codec (modcam.link.protocol): decoding, request
checking and SCM_RIGHTS framing, including every kind of bad input.

The rule under test: anything at all a peer sends turns into a ProtocolError
with a sentence (and the request id when there is a usable one), never into
another exception.
"""
import os
import re
import socket
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modcam import names
from modcam.link import protocol
from modcam.link.protocol import ProtocolError

DOC = Path(__file__).resolve().parents[2] / "docs" / "control-protocol.md"


def test_version_matches_the_udev_property():
    assert protocol.VERSION == names.PROTOCOL_VERSION


def test_encode_is_compact_ascii_and_round_trips():
    message = {"id": 7, "op": "stream", "on": True, "fps": 29.97, "note": "°C\ud800"}
    data = protocol.encode(message)
    assert data.isascii() and b" " not in data
    assert protocol.decode(data) == message


def test_encode_refuses_nan_and_oversized_messages():
    with pytest.raises(ValueError):
        protocol.encode({"id": 1, "x": float("nan")})
    with pytest.raises(ValueError, match="exceeds"):
        protocol.encode({"id": 1, "pad": "x" * protocol.MAX_MESSAGE})


@pytest.mark.parametrize("data, why", [
    (b"", "empty"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"{", "not valid JSON"),
    (b'{"id": 1} trailing', "not valid JSON"),
    (b'{"id": NaN}', "not valid JSON"),
    (b'{"id": 1, "x": Infinity}', "not valid JSON"),
    (b'{"x": -Infinity}', "not valid JSON"),
    (b'{"x": 1e999}', "too large"),
    (b'{"id": 1, "id": 2}', "appears twice"),
    (b"[" * 200_000 + b"]" * 200_000, "nests too deeply|too large|exceeds|not valid JSON"),
    (b'{"x": ' + b"9" * 5000 + b"}", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object, not an array"),
    (b'"hello"', "not a string"),
    (b"42", "not an integer"),
    (b"null", "not null"),
    (b"x" * (protocol.MAX_MESSAGE + 1), "exceeds"),
])
def test_decode_refuses_bad_messages_with_a_sentence(data, why):
    with pytest.raises(ProtocolError) as info:
        protocol.decode(data)
    assert info.value.code == protocol.BAD_REQUEST
    assert re.search(why, info.value.message), info.value.message


def test_deep_nesting_within_the_size_limit_is_refused():
    data = b"[" * 30_000 + b"]" * 30_000
    assert len(data) <= protocol.MAX_MESSAGE
    with pytest.raises(ProtocolError, match="nests too deeply|not valid JSON"):
        protocol.decode(data)


@pytest.mark.parametrize("message, id_, why", [
    ({"op": "status"}, None, "has no id"),
    ({"id": "7", "op": "status"}, None, "not an integer"),
    ({"id": True, "op": "status"}, None, "not an integer"),
    ({"id": -1, "op": "status"}, None, "not an integer"),
    ({"id": 1.0, "op": "status"}, None, "not an integer"),
    ({"id": 2**53, "op": "status"}, None, "not an integer"),
    ({"id": 3}, 3, "no op"),
    ({"id": 3, "op": 5}, 3, "no op"),
])
def test_requests_need_an_id_and_an_op(message, id_, why):
    with pytest.raises(ProtocolError, match=why) as info:
        protocol.parse_request(message)
    assert info.value.request_id == id_ and info.value.code == protocol.BAD_REQUEST


def test_unknown_op_and_unknown_argument():
    with pytest.raises(ProtocolError, match="unknown op 'fly'") as info:
        protocol.parse_request({"id": 4, "op": "fly"})
    assert (info.value.code, info.value.request_id) == (protocol.UNKNOWN_OP, 4)
    with pytest.raises(ProtocolError,
                       match=r"stream takes no argument .speed. \(its arguments: on, fps\)") as info:
        protocol.parse_request({"id": 5, "op": "stream", "on": True, "speed": 3})
    assert (info.value.code, info.value.argument, info.value.request_id) == (
        protocol.BAD_REQUEST, "speed", 5)


@pytest.mark.parametrize("op, args, code, argument, why", [
    ("power", {}, "bad-request", "on", "power needs the argument on"),
    ("power", {"on": 1}, "bad-request", "on", "on must be true or false, not an integer"),
    ("set_controls", {"exposure_us": 29}, "out-of-range", "exposure_us",
     "exposure_us 29 µs is below the minimum 30 µs"),
    ("set_controls", {"exposure_us": 1_000_001}, "out-of-range", "exposure_us",
     "exposure_us 1000001 µs is above the maximum 1000000 µs"),
    ("set_controls", {"exposure_us": 100.5}, "bad-request", "exposure_us",
     "exposure_us must be an integer, not a number"),
    ("set_controls", {"exposure_us": True}, "bad-request", "exposure_us", "not a boolean"),
    ("set_controls", {"analogue_gain": 0.5}, "out-of-range", "analogue_gain",
     "analogue_gain 0.5 is below the minimum 1"),
    ("set_controls", {"analogue_gain": "2"}, "bad-request", "analogue_gain",
     "analogue_gain must be a number, not a string"),
    ("set_controls", {"aperture": 12}, "out-of-range", "aperture",
     "aperture 12 is above the maximum 11"),
    ("set_controls", {"lens_position": 3.4}, "out-of-range", "lens_position",
     "lens_position 3.4 dioptres is above the maximum 3.33333 dioptres"),
    ("set_controls", {"lens_position": 10**400}, "out-of-range", "lens_position",
     "far outside"),
    ("set_controls", {"readout_mode": "huge"}, "out-of-range", "readout_mode",
     "readout_mode 'huge' is not one of full, binned, zoom2x"),
    ("set_controls", {"readout_mode": None}, "bad-request", "readout_mode", "not null"),
    ("attach_ring", {"slot_count": 3}, "out-of-range", "slot_count", "not one of 2, 4"),
    ("stream", {"on": True, "fps": 0}, "out-of-range", "fps", "below the minimum"),
    ("stream", {"on": True, "fps": [30]}, "bad-request", "fps", "not an array"),
    ("sim.turn_focus_ring", {"position": -0.1}, "out-of-range", "position", "below"),
    ("sim.inject_fault", {"kind": "meteor"}, "out-of-range", "kind", "not one of link_drop"),
    ("sim.inject_fault", {"kind": "stall", "count": 2}, "bad-request", "count",
     "fault stall takes only seconds, not count"),
    ("sim.inject_fault", {"kind": "link_drop", "seconds": 1}, "bad-request", "seconds",
     "takes no parameters"),
    ("sim.set_ambient", {"illuminant": "F2"}, "out-of-range", "illuminant", "not one of D65"),
    ("sim.set_ambient", {"illuminant": 900}, "out-of-range", "illuminant",
     "below the minimum 1667 K"),
    ("sim.set_scene", {"name": ""}, "out-of-range", "name", "1 to 64 characters"),
    ("hello", {"version": 0}, "out-of-range", "version", "below the minimum 1"),
])
def test_arguments_are_checked_and_errors_name_them(op, args, code, argument, why):
    with pytest.raises(ProtocolError) as info:
        protocol.parse_request({"id": 9, "op": op, **args})
    exc = info.value
    assert (exc.code, exc.argument, exc.request_id) == (code, argument, 9)
    assert why in exc.message, exc.message


def test_good_requests_come_back_checked():
    rid, op, args = protocol.parse_request(
        {"id": 12, "op": "set_controls", "exposure_us": 5000, "analogue_gain": 2,
         "readout_mode": "binned"})
    assert (rid, op) == (12, "set_controls")
    assert args == {"exposure_us": 5000, "analogue_gain": 2.0, "readout_mode": "binned"}
    assert isinstance(args["analogue_gain"], float)
    assert protocol.parse_request({"id": 1, "op": "sim.set_ambient", "illuminant": 3200})[2] == \
        {"illuminant": 3200.0}


def test_reply_shapes():
    assert protocol.ok(3, {"a": 1}) == {"id": 3, "ok": True, "result": {"a": 1}}
    assert protocol.error(3, "out-of-range", "x is too big", "x") == {
        "id": 3, "ok": False,
        "error": {"code": "out-of-range", "message": "x is too big", "argument": "x"}}


def test_the_document_covers_every_op_error_code_fault_and_event():
    text = DOC.read_text()
    for word in [*protocol.OPS, *protocol.ERROR_CODES, *protocol.FAULT_KINDS,
                 *protocol.GARBAGE_VARIANTS, "ready", "state", "focus-ring", "thermal",
                 "SCM_RIGHTS", "SOCK_SEQPACKET"]:
        assert f"`{word}`" in text, f"docs/control-protocol.md does not mention `{word}`"


# ---- fuzzing: nothing but ProtocolError ever comes out ----------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                        children, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decode_of_any_bytes_is_a_dict_or_a_protocol_error(data):
    try:
        assert isinstance(protocol.decode(data), dict)
    except ProtocolError as exc:
        assert exc.code == protocol.BAD_REQUEST and exc.message


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.sampled_from(sorted(protocol.OPS)), st.text(max_size=12)),
       st.one_of(st.integers(), _json),
       st.dictionaries(st.sampled_from(sorted({a for spec in protocol.OPS.values() for a in spec}
                                              | {"bogus"})), _json, max_size=4))
def test_parse_request_of_any_object_is_checked_or_a_protocol_error(op, rid, args):
    message = {**args, "id": rid, "op": op}
    try:
        got_id, got_op, checked = protocol.parse_request(message)
    except ProtocolError as exc:
        assert exc.code in protocol.ERROR_CODES and exc.message
        assert exc.request_id in (None, protocol.request_id_of(message))
        protocol.encode(protocol.error(0, exc.code, exc.message, exc.argument))  # always sendable
    else:
        assert got_op in protocol.OPS and got_id == rid
        assert set(checked) <= set(protocol.OPS[got_op])


# ---- framing ---------------------------------------------------------------

@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_messages_keep_their_boundaries_and_carry_descriptors(pair):
    a, b = pair
    r, w = os.pipe()
    try:
        protocol.send(a, protocol.encode({"event": "x"}))
        protocol.send(a, b'{"id":1}', [r])
        first, second = protocol.receive(b), protocol.receive(b)
        assert first.data == b'{"event":"x"}' and first.fds == []
        assert second.data == b'{"id":1}' and len(second.fds) == 1
        os.write(w, b"!")
        assert os.read(second.fds[0], 1) == b"!"      # the same pipe, passed over
        os.close(second.fds[0])
        with pytest.raises(BlockingIOError):
            protocol.receive(b)
    finally:
        os.close(r)
        os.close(w)


def test_an_empty_message_is_not_end_of_file(pair):
    a, b = pair
    a.sendmsg([b""])
    got = protocol.receive(b)
    assert (got.data, got.eof, got.truncated) == (b"", False, False)
    a.close()
    assert protocol.receive(b).eof


def test_oversized_messages_and_too_many_descriptors_are_marked_truncated(pair):
    a, b = pair
    a.sendmsg([b"x" * (protocol.MAX_MESSAGE + 10)])
    assert protocol.receive(b).truncated
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(protocol.MAX_FDS + 3)]
    try:
        protocol.send(a, b"{}", fds)
        got = protocol.receive(b)
        assert got.truncated
        for fd in got.fds:       # the ones that fitted are still ours to close
            os.close(fd)
    finally:
        for fd in fds:
            os.close(fd)
