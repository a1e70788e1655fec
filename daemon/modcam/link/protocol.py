"""The module control protocol's codec, shared by the daemon and the module side.

Owns version 1 of the protocol in docs/control-protocol.md as code: framing
over a UNIX SOCK_SEQPACKET socket (one message = one UTF-8 JSON object of at
most MAX_MESSAGE bytes, file descriptors as SCM_RIGHTS), strict decoding (no
NaN/Infinity, no duplicate keys, no nesting bombs: every failure is a
ProtocolError with a sentence, never another exception), the table of ops and
their arguments with ranges, and the error codes. Both ends validate with the
same table, so the documented ranges and the checked ones cannot drift apart.
Also the module side's listener (replacing a stale socket file, never a live
one) and the malformed messages the garbage_control fault sends.
"""
from __future__ import annotations

import array
import errno
import json
import math
import os
import select
import socket
import stat
from dataclasses import dataclass

VERSION = 1
PROTOCOL_NAME = "modcam-control"
MAX_MESSAGE = 64 * 1024          # bytes of one encoded message
MAX_FDS = 4                      # descriptors accepted with one message
MAX_ID = 2**53 - 1               # ids survive a round trip through any JSON library
EEPROM_PAGE = 32 * 1024          # largest read_eeprom chunk: its base64 fits a message

# Error codes (the "code" of an error reply or error event).
BAD_REQUEST = "bad-request"
UNKNOWN_OP = "unknown-op"
OUT_OF_RANGE = "out-of-range"
WRONG_STATE = "wrong-state"
BUSY = "busy"
FAILED = "failed"
NOT_PERMITTED = "not-permitted"
UNSUPPORTED_VERSION = "unsupported-version"
TIMEOUT = "timeout"              # client side only: no reply in time
ERROR_CODES = (BAD_REQUEST, UNKNOWN_OP, OUT_OF_RANGE, WRONG_STATE, BUSY, FAILED,
               NOT_PERMITTED, UNSUPPORTED_VERSION)

READOUT_MODES = ("full", "binned", "zoom2x")
LENS_POSITION_MAX = 1.0 / 0.3    # dioptres: focus down to 0.3 m
FAULT_KINDS = ("link_drop", "stall", "corrupt_crc", "truncated", "torn", "producer_crash",
               "slow_boot", "boot_failure", "thermal_shutdown", "garbage_control")
# What the garbage_control fault sends: one malformed message of each kind.
GARBAGE = {"not-json": b"\x00this is not JSON{", "not-object": b"[1,2,3]",
           "bad-utf8": b'{"event":"\xff\xfe"}', "empty": b"",
           "unknown-reply": b'{"id":9007199254740991,"ok":true,"result":{}}',
           "no-event-name": b'{"hello":"world"}',
           "oversized": b'{"event":"x","pad":"' + b"x" * MAX_MESSAGE + b'"}'}
GARBAGE_VARIANTS = tuple(GARBAGE)
ILLUMINANTS = ("D65", "D50", "A")
# The optional parameters each fault kind takes (sim.inject_fault).
FAULT_PARAMS = {"link_drop": (), "stall": ("seconds",), "corrupt_crc": ("count",),
                "truncated": ("count",), "torn": ("count",), "producer_crash": ("count",),
                "slow_boot": ("seconds",), "boot_failure": ("reason",),
                "thermal_shutdown": (), "garbage_control": ("variant",)}


class RequestError(Exception):
    """A request the module side refuses: becomes an error reply with this code."""

    def __init__(self, code: str, message: str, argument: str | None = None):
        super().__init__(message)
        self.code, self.message, self.argument = code, message, argument


class ProtocolError(RequestError):
    """A message or argument the protocol does not allow; knows the request id if any."""

    def __init__(self, code: str, message: str, argument: str | None = None,
                 request_id: int | None = None):
        super().__init__(code, message, argument)
        self.request_id = request_id


@dataclass(frozen=True)
class Arg:
    """One argument of an op: its JSON type, range and whether it must be given."""
    kind: str                    # bool, int, number, choice, choice_int, string, illuminant
    lo: float | None = None
    hi: float | None = None
    choices: tuple = ()
    required: bool = False
    unit: str = ""

    def check(self, name: str, value):
        if self.kind == "bool":
            return _typed(name, value, bool, "true or false")
        if self.kind == "choice" or self.kind == "string":
            value = _typed(name, value, str, "a string")
            if self.kind == "choice" and value not in self.choices:
                raise ProtocolError(OUT_OF_RANGE, f"{name} {_show(value)} is not one of "
                                    f"{', '.join(self.choices)}", name)
            if self.kind == "string" and not 1 <= len(value) <= 64:
                raise ProtocolError(OUT_OF_RANGE, f"{name} must be 1 to 64 characters long", name)
            return value
        if self.kind == "choice_int":
            value = _typed(name, value, int, "an integer")
            if value not in self.choices:
                raise ProtocolError(OUT_OF_RANGE, f"{name} {_show(value)} is not one of "
                                    f"{', '.join(map(str, self.choices))}", name)
            return value
        if self.kind == "illuminant":
            if isinstance(value, str):
                return Arg("choice", choices=ILLUMINANTS).check(name, value)
            return Arg("number", 1667, 25000, unit=" K").check(name, value)
        if self.kind == "int":
            value = _typed(name, value, int, "an integer")
        else:
            try:
                value = float(_typed(name, value, (int, float), "a number"))
            except OverflowError:  # an integer beyond any float
                raise ProtocolError(OUT_OF_RANGE, f"{name} is far outside its range",
                                    name) from None
        if self.lo is not None and value < self.lo:
            raise ProtocolError(OUT_OF_RANGE, f"{name} {_show(value)}{self.unit} is below the "
                                f"minimum {_num(self.lo)}{self.unit}", name)
        if self.hi is not None and value > self.hi:
            raise ProtocolError(OUT_OF_RANGE, f"{name} {_show(value)}{self.unit} is above the "
                                f"maximum {_num(self.hi)}{self.unit}", name)
        return value


# Controls, as set_controls takes them and status reports them.
CONTROLS = {
    "readout_mode": Arg("choice", choices=READOUT_MODES),
    "exposure_us": Arg("int", 30, 1_000_000, unit=" µs"),
    "analogue_gain": Arg("number", 1.0, 16.0),
    "aperture": Arg("number", 1.4, 11.0),
    "lens_position": Arg("number", 0.0, LENS_POSITION_MAX, unit=" dioptres"),
}

# Every op and its arguments. "sim." ops model a person or the lab: a real
# module has none of them.
OPS: dict[str, dict[str, Arg]] = {
    "hello": {"version": Arg("int", 1, 1_000_000, required=True)},
    "identify": {},
    "read_eeprom": {"offset": Arg("int", 0, 2**32), "length": Arg("int", 1, EEPROM_PAGE)},
    "power": {"on": Arg("bool", required=True)},
    "status": {},
    "set_controls": CONTROLS,
    "attach_ring": {"slot_count": Arg("choice_int", choices=(2, 4, 8, 16, 32, 64))},
    "stream": {"on": Arg("bool", required=True), "fps": Arg("number", 0.01, 100_000.0)},
    "trigger_still": {},
    "sim.turn_focus_ring": {"position": Arg("number", 0.0, LENS_POSITION_MAX, required=True,
                                            unit=" dioptres")},
    "sim.inject_fault": {"kind": Arg("choice", choices=FAULT_KINDS, required=True),
                         "seconds": Arg("number", 0.0, 3600.0, unit=" s"),
                         "count": Arg("int", 1, 1000),
                         "variant": Arg("choice", choices=GARBAGE_VARIANTS),
                         "reason": Arg("string")},
    "sim.set_scene": {"name": Arg("string", required=True),
                      "distance_m": Arg("number", 0.3, 10_000.0, unit=" m"),
                      "seed": Arg("int", 0, 2**32 - 1)},
    "sim.set_ambient": {"temperature_c": Arg("number", -40.0, 100.0, unit=" °C"),
                        "lux": Arg("number", 0.01, 200_000.0, unit=" lux"),
                        "illuminant": Arg("illuminant")},
}
SIM_SOCKET_OPS = frozenset({"hello", "identify", "status"}
                           | {op for op in OPS if op.startswith("sim.")})


def _typed(name: str, value, types, what: str):
    # bool is an int in Python but not in the protocol: true is not 1.
    if isinstance(value, bool) and types is not bool:
        raise ProtocolError(BAD_REQUEST, f"{name} must be {what}, not a boolean", name)
    if not isinstance(value, types):
        raise ProtocolError(BAD_REQUEST, f"{name} must be {what}, not {_json_type(value)}", name)
    return value


def _json_type(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(value), "a value")


def _num(x: float) -> str:
    if isinstance(x, int) or (float(x).is_integer() and abs(x) < 1e15):
        return str(int(x))
    return f"{x:.6g}"


def _show(value) -> str:
    """A short rendering of a client-supplied value for an error sentence."""
    text = _num(value) if isinstance(value, float) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def validate_args(op: str, args: dict, request_id: int | None = None) -> dict:
    """Checked copy of `args` for `op`; ProtocolError naming the first bad argument."""
    spec = OPS.get(op)
    if spec is None:
        raise ProtocolError(UNKNOWN_OP, f"unknown op {_show(op)}", None, request_id)
    out = {}
    for name, value in args.items():
        arg = spec.get(name)
        if arg is None:
            known = ", ".join(spec) or "none"
            raise ProtocolError(BAD_REQUEST, f"{op} takes no argument {_show(name)} "
                                f"(its arguments: {known})", name, request_id)
        try:
            out[name] = arg.check(name, value)
        except ProtocolError as exc:
            exc.request_id = request_id
            raise
    missing = [name for name, arg in spec.items() if arg.required and name not in out]
    if missing:
        raise ProtocolError(BAD_REQUEST, f"{op} needs the argument {missing[0]}", missing[0],
                            request_id)
    if op == "sim.inject_fault":
        allowed = FAULT_PARAMS[out["kind"]]
        for name in out:
            if name != "kind" and name not in allowed:
                takes = f"only {', '.join(allowed)}" if allowed else "no parameters"
                raise ProtocolError(BAD_REQUEST, f"fault {out['kind']} takes {takes}, not {name}",
                                    name, request_id)
    return out


# ---- encoding and decoding -------------------------------------------------

def encode(message: dict) -> bytes:
    """Compact JSON (ASCII, so lone surrogates cannot break it); ValueError if too big."""
    data = json.dumps(message, separators=(",", ":"), allow_nan=False).encode("ascii")
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"message of {len(data)} bytes exceeds the {MAX_MESSAGE}-byte limit")
    return data


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is too large")
    return value


def _unique_object(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"key {_show(key)} appears twice")
        obj[key] = value
    return obj


def decode(data: bytes) -> dict:
    """One received message as a dict; ProtocolError(bad-request) saying what is wrong."""
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(BAD_REQUEST, f"message exceeds the {MAX_MESSAGE}-byte limit")
    if not data:
        raise ProtocolError(BAD_REQUEST, "message is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(BAD_REQUEST, f"message is not UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float,
                           object_pairs_hook=_unique_object)
    except RecursionError:
        raise ProtocolError(BAD_REQUEST, "message nests too deeply") from None
    except ValueError as exc:  # JSONDecodeError, our hooks, int digit limit
        raise ProtocolError(BAD_REQUEST, f"message is not valid JSON: {str(exc)[:120]}") from None
    if not isinstance(value, dict):
        raise ProtocolError(BAD_REQUEST, f"message must be a JSON object, not {_json_type(value)}")
    return value


def request_id_of(message: dict) -> int | None:
    """The message's id if it is one the protocol allows, else None."""
    rid = message.get("id")
    if isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid <= MAX_ID:
        return rid
    return None


def parse_request(message: dict) -> tuple[int, str, dict]:
    """(id, op, checked args) of a decoded request; ProtocolError otherwise."""
    rid = request_id_of(message)
    if rid is None:
        why = "no id" if "id" not in message else f"an id that is not an integer 0..{MAX_ID}"
        raise ProtocolError(BAD_REQUEST, f"request has {why}")
    op = message.get("op")
    if not isinstance(op, str):
        raise ProtocolError(BAD_REQUEST, "request has no op string", "op", rid)
    args = {k: v for k, v in message.items() if k not in ("id", "op")}
    return rid, op, validate_args(op, args, rid)


def ok(request_id: int, result: dict) -> dict:
    return {"id": request_id, "ok": True, "result": result}


def error(request_id: int, code: str, message: str, argument: str | None = None) -> dict:
    err = {"code": code, "message": message}
    if argument is not None:
        err["argument"] = argument
    return {"id": request_id, "ok": False, "error": err}


# ---- framing over SOCK_SEQPACKET --------------------------------------------

@dataclass
class Received:
    data: bytes
    fds: list
    truncated: bool      # the message (or its descriptors) did not fit: refuse it
    eof: bool = False


def send(sock: socket.socket, data: bytes, fds=()) -> None:
    """Send one encoded message, with descriptors as SCM_RIGHTS."""
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([data], ancillary)


def receive(sock: socket.socket) -> Received:
    """Receive one message (BlockingIOError if none is waiting).

    A zero-length read is end of file only if the peer has hung up: on a
    SOCK_SEQPACKET socket an empty message reads the same way.
    """
    space = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
    data, ancdata, flags, _ = sock.recvmsg(MAX_MESSAGE, space)
    fds = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % array.array("i").itemsize
            fds.extend(array.array("i", payload[:usable]))
    truncated = bool(flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC))
    if not data and not truncated and not fds:
        return Received(b"", [], False, eof=hung_up(sock))
    return Received(data, fds, truncated)


def hung_up(sock: socket.socket) -> bool:
    """True once the peer has closed its end (whatever is still queued)."""
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP)
    return any(ev & (select.POLLHUP | select.POLLRDHUP | select.POLLERR)
               for _, ev in poller.poll(0))


def close_fds(fds) -> None:
    """Close received descriptors nobody took (a list is emptied)."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    if isinstance(fds, list):
        fds.clear()


def listen(path: str) -> tuple[socket.socket, tuple]:
    """A non-blocking SEQPACKET listener at path, and the file's identity for
    unlink_listener. A stale socket file (nobody listening) is replaced; a
    live one or anything that is not a socket is refused with a sentence."""
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.bind(path)
        st = os.lstat(path)
        sock.listen(8)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {path}: {exc.strerror}") from None
    return sock, (st.st_dev, st.st_ino)


def unlink_listener(path: str, identity: tuple) -> None:
    """Unlink our socket file, not one a newer server has bound at the same path."""
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == identity:
            os.unlink(path)
    except OSError:
        pass


def _remove_stale_socket(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)               # stale: its server died without cleaning up
        return
    except OSError:
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"another module is already serving {path}")
