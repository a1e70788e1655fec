"""The daemon's end of a module's control channel (docs/control-protocol.md).

Owns one connection to MODCAM_CONTROL: the hello handshake, requests with
timeouts, replies matched to requests by id, events handed to a callback,
file descriptors passed both ways (attach_ring), and tolerance of whatever
the module sends: a malformed message is counted and logged
(`protocol_errors`), never raised, and the channel keeps working.

Two ways to use it, from one thread:
- blocking (tests, tools): `request(op, **args)` waits for its reply (events
  arriving meanwhile go to `on_event`); `wait_event(...)` waits for an event;
- from a main loop (modcamd): watch `fileno()` for input and call
  `process_incoming()`, which reads what is there without blocking and
  raises ChannelClosed at end of file; `send_request(op, callback, **args)`
  sends without waiting, and the callback later gets (result, error, fds).
No GLib here: the daemon wraps it.
"""
from __future__ import annotations

import base64
import collections
import contextlib
import logging
import os
import select
import socket
import time
from typing import Callable

from modcam.link import protocol
from modcam.link.protocol import ProtocolError

log = logging.getLogger("modcam.link.control")


class ControlError(Exception):
    """The module answered a request with an error; `code` is the protocol's."""

    def __init__(self, code: str, message: str, argument: str | None = None):
        super().__init__(message)
        self.code, self.message, self.argument = code, message, argument


class ControlTimeout(ControlError, TimeoutError):
    """No reply arrived in time (the request may still take effect)."""


class ChannelClosed(ConnectionError):
    """The control channel is closed: the module went away or refused us."""


class ControlChannel:
    """A connected, greeted control channel (`hello_result` holds the module's
    answer). Not thread-safe: use it from one thread. ChannelClosed if the
    socket cannot be reached or the module refuses us (its reason included)."""

    def __init__(self, path: str, *, on_event: Callable[[dict], None] | None = None,
                 timeout: float = 5.0, hello: bool = True):
        self.path, self.on_event, self.timeout = os.fspath(path), on_event, timeout
        # The last sentences about malformed messages (bounded: a module spewing
        # garbage must not grow the daemon), and how many there were in all.
        self.protocol_errors: collections.deque = collections.deque(maxlen=64)
        self.protocol_error_count = 0
        self.hello_result: dict | None = None
        self.ring_geometry: dict | None = None
        self._events: collections.deque = collections.deque(maxlen=1024)  # for wait_event
        self._pending: dict[int, list] = {}       # id -> [op, callback]
        self._abandoned: set[int] = set()
        self._next_id = 1
        self._last_refusal: str | None = None
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(self.path)
            self._sock.setblocking(False)
        except OSError as exc:
            self._sock.close()
            raise ChannelClosed(f"cannot connect to the module's control socket {self.path}: "
                                f"{exc.strerror or exc}") from exc
        if hello:
            try:
                self.hello_result = self.request("hello", version=protocol.VERSION)
            except BaseException:
                self.close()
                raise

    # -- life cycle ----------------------------------------------------------

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def closed(self) -> bool:
        return self._sock.fileno() < 0

    def close(self) -> None:
        if not self.closed:
            self._sock.close()
        self._fail_pending(ChannelClosed("the control channel was closed"))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- requests ------------------------------------------------------------

    def send_request(self, op: str, callback: Callable | None = None, fds=(), **args) -> int:
        """Send a request without waiting; callback(result, error, fds) comes from
        process_incoming() (fds: descriptors the reply carried, now the callee's)."""
        if self.closed:
            raise ChannelClosed(f"cannot send {op}: the control channel is closed")
        rid, self._next_id = self._next_id, self._next_id + 1
        data = protocol.encode({"id": rid, "op": op, **args})
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                protocol.send(self._sock, data, fds)
                break
            except BlockingIOError:  # the module is not reading: wait a little for room
                if not self._poll(select.POLLOUT, deadline):
                    raise ControlTimeout(protocol.TIMEOUT, f"the module did not accept {op} "
                                         f"within {self.timeout:.1f} s") from None
            except OSError as exc:   # EPIPE, ECONNRESET
                with contextlib.suppress(ChannelClosed):
                    self.process_incoming()   # what it said before closing (a refusal)
                self._closed_by_peer(f"the module closed the control channel ({exc.strerror})")
        self._pending[rid] = [op, callback]
        return rid

    def request(self, op: str, timeout: float | None = None, fds=(), **args) -> dict:
        """Send and wait for the reply's result; ControlError on an error reply,
        ControlTimeout after `timeout` s, ChannelClosed at end of file."""
        result, fds = self._request(op, timeout, fds, args)
        protocol.close_fds(fds)       # only attach_ring expects descriptors
        return result

    def _request(self, op, timeout, fds, args) -> tuple[dict, list]:
        box = []
        rid = self.send_request(op, lambda *answer: box.append(answer), fds, **args)
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while not box:
            if not self._poll(select.POLLIN, deadline):
                self._pending.pop(rid, None)
                self._abandoned.add(rid)
                raise ControlTimeout(protocol.TIMEOUT, f"the module did not answer {op} "
                                     f"within {limit:.1f} s")
            self.process_incoming()
        result, error, reply_fds = box[0]
        if error is not None:
            raise error
        return result, reply_fds

    def attach_ring(self, doorbell_fd: int, slot_count: int | None = None) -> int:
        """Hand the module our doorbell eventfd; returns the ring region's fd (ours to
        close). The geometry is kept in `ring_geometry`."""
        args = {} if slot_count is None else {"slot_count": slot_count}
        result, fds = self._request("attach_ring", None, (doorbell_fd,), args)
        if len(fds) != 1:
            protocol.close_fds(fds)
            raise ControlError(protocol.FAILED, "the module's attach_ring reply carried "
                               f"{len(fds)} file descriptors instead of one")
        self.ring_geometry = result
        return fds[0]

    def open_ring(self, slot_count: int | None = None):
        """attach_ring with a fresh eventfd, as a ring.Consumer (ours to close)."""
        from modcam.link.ring import Consumer
        doorbell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            region = self.attach_ring(doorbell, slot_count)
            try:
                return Consumer(region, doorbell_fd=doorbell)   # duplicates both
            finally:
                os.close(region)
        finally:
            os.close(doorbell)

    def read_eeprom(self) -> bytes:
        """The whole EEPROM (the calibration blob), read page by page."""
        chunks, offset = [], 0
        while True:
            result = self.request("read_eeprom", offset=offset)
            data = base64.b64decode(result["data"], validate=True)
            chunks.append(data)
            offset += len(data)
            if offset >= result["total"] or not data:
                return b"".join(chunks)

    # -- incoming ------------------------------------------------------------

    def process_incoming(self) -> int:
        """Handle every message waiting, without blocking; the number handled.
        Raises ChannelClosed at end of file (after failing pending requests)."""
        if self.closed:
            raise ChannelClosed("the control channel is closed")
        handled, reset = 0, False
        while True:
            try:
                received = protocol.receive(self._sock)
            except BlockingIOError:
                return handled
            except ConnectionResetError:
                # The module closed with a request of ours unread. Linux reports
                # that before the messages it sent last (a refusal, a reply):
                # read those, then the end of file.
                if reset:
                    self._closed_by_peer("the module closed the control channel")
                reset = True
                continue
            except OSError as exc:
                self._closed_by_peer(f"the module closed the control channel ({exc.strerror})")
            if received.eof:
                if handled:       # deliver what came before it; the next call raises
                    return handled
                self._closed_by_peer("the module closed the control channel")
            handled += 1
            self._dispatch(received)

    def wait_event(self, match: str | Callable[[dict], bool], timeout: float | None = None) -> dict:
        """The first event, not yet waited for, with that name (or passing the
        predicate); events before it are discarded from this queue."""
        test = (lambda e: e.get("event") == match) if isinstance(match, str) else match
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            while self._events:
                event = self._events.popleft()
                if test(event):
                    return event
            if not self._poll(select.POLLIN, deadline):
                what = match if isinstance(match, str) else "matching"
                raise ControlTimeout(protocol.TIMEOUT, f"no {what} event arrived in time")
            self.process_incoming()

    def _dispatch(self, received: protocol.Received) -> None:
        fds = received.fds
        try:
            if received.truncated:
                raise ProtocolError(protocol.BAD_REQUEST, "the module sent a message larger than "
                                    f"{protocol.MAX_MESSAGE} bytes")
            message = protocol.decode(received.data)
            if isinstance(message.get("event"), str):
                self._event(message)
            elif protocol.request_id_of(message) is not None:
                fds = self._reply(message, fds)
            else:
                raise ProtocolError(protocol.BAD_REQUEST, "the module sent a message that is "
                                    "neither a reply nor an event")
        except ProtocolError as exc:
            self.protocol_errors.append(exc.message)
            self.protocol_error_count += 1
            log.warning("ignoring a malformed message from the module at %s: %s",
                        self.path, exc.message)
        finally:
            protocol.close_fds(fds)

    def _event(self, event: dict) -> None:
        if event["event"] == "error" and not self.hello_result:
            self._last_refusal = str(event.get("message"))
        self._events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    def _reply(self, message: dict, fds: list) -> list:
        """Deliver a reply; returns the descriptors nobody took (to be closed)."""
        rid = message["id"]
        if rid in self._abandoned:
            self._abandoned.discard(rid)
            return fds
        pending = self._pending.pop(rid, None)
        if pending is None:
            raise ProtocolError(protocol.BAD_REQUEST, f"the module replied to id {rid}, "
                                "which no request is waiting for")
        op, callback = pending
        result, error = message.get("result"), None
        if message.get("ok") is True and isinstance(result, dict):
            pass
        elif message.get("ok") is False and isinstance(message.get("error"), dict) \
                and isinstance(message["error"].get("code"), str):
            err = message["error"]
            error, result = ControlError(err["code"], str(err.get("message", "")),
                                         err.get("argument")), None
        else:
            result, error = None, ControlError(protocol.FAILED, f"the module's reply to {op} "
                                               "is malformed")
            self.protocol_errors.append(error.message)
            self.protocol_error_count += 1
        if callback is not None:
            callback(result, error, list(fds) if error is None else [])
            return [] if error is None else fds
        return fds

    # -- helpers -------------------------------------------------------------

    def _poll(self, events: int, deadline: float) -> bool:
        poller = select.poll()
        poller.register(self._sock, events)
        remaining = deadline - time.monotonic()
        return bool(poller.poll(max(0, int(remaining * 1000 + 0.999))))

    def _closed_by_peer(self, why: str):
        if self._last_refusal:
            why = f"{why}: {self._last_refusal}"
        self._fail_pending(ChannelClosed(why))
        self.close()
        raise ChannelClosed(why)

    def _fail_pending(self, error: Exception) -> None:
        pending, self._pending = self._pending, {}
        for op, callback in pending.values():
            if callback is not None:
                callback(None, error, [])
