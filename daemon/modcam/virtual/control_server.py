"""The virtual module's control channel: the socket server around the model.

Owns the module side of docs/control-protocol.md: two SOCK_SEQPACKET
listeners, one event loop (selectors; in a thread of its own or the caller's),
request dispatch to the model (module.py) and the streamer (streamer.py),
events out to clients, and the transport faults (link_drop, garbage_control).

- The control socket (MODCAM_CONTROL) takes one client at a time; a second
  is told why in an error event and closed. A client that vanishes is simply
  dropped (its ring is abandoned; the module keeps its power state).
- The simulation socket (control path + ".sim") takes any number of clients
  and only hello, identify, status and the sim.* ops: the person turning the
  focus ring or the lab injecting a fault, while the daemon holds the control
  socket. A real module has no such socket.

No input ends the loop: every message gets a reply or an error event, an
unexpected exception in a handler becomes a "failed" reply, and a client that
stops reading is disconnected once MAX_QUEUED messages wait for it.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import selectors
import socket
import struct
import threading

from modcam.link import protocol
from modcam.link.protocol import RequestError
from modcam.virtual.module import ModuleError, VirtualModule
from modcam.virtual.streamer import Streamer, SyntheticSource

log = logging.getLogger("modcam.virtual.server")
MAX_QUEUED = 1024
SIM_SUFFIX = ".sim"
_DEFERRED = object()


class _Conn:
    def __init__(self, sock: socket.socket, kind: str):
        self.sock, self.kind = sock, kind
        self.version: int | None = None            # set by hello
        self.outbox: collections.deque = collections.deque()   # (bytes, fds to close after)
        self.closed = False
        self.want_write = False
        pid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        self.peer = f"pid {pid}"


class ControlServer:
    def __init__(self, module: VirtualModule, control_path: str, *, source=None,
                 sim_path: str | None = None):
        self.module = module
        self.control_path = os.fspath(control_path)
        self.sim_path = sim_path or self.control_path + SIM_SUFFIX
        source = source or SyntheticSource()
        module.use_scenes(source.scenes)
        module.listener = self._post_event
        self.streamer = Streamer(module, source, self._still_done)
        self.dropped = threading.Event()            # set when link_drop took it away
        self._sel = selectors.DefaultSelector()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._events: collections.deque = collections.deque()
        self._calls: collections.deque = collections.deque()
        self._conns: list[_Conn] = []
        self._control: _Conn | None = None
        self._stop = self._dropping = False
        self._thread: threading.Thread | None = None
        self._listeners: list[socket.socket] = []
        self._bound: dict[str, tuple] = {}
        self._sel.register(self._wake_fd, selectors.EVENT_READ, self._on_wake)
        self._listen(self.control_path, "control")
        self._listen(self.sim_path, "sim")

    # -- life cycle ----------------------------------------------------------

    def _listen(self, path: str, kind: str) -> socket.socket:
        try:
            sock, self._bound[path] = protocol.listen(path)
        except OSError:
            self._shutdown()
            raise
        self._sel.register(sock, selectors.EVENT_READ, lambda mask: self._accept(sock, kind))
        self._listeners.append(sock)
        return sock

    def start(self) -> "ControlServer":
        """Serve in a background thread; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="modcam-control",
                                        daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.streamer.start()
        try:
            while not self._stop:
                timeout = self.module.tick()
                for key, mask in self._sel.select(timeout):
                    key.data(mask)
                self._run_calls()
                self._flush_events()
        finally:
            self._shutdown()

    def stop(self) -> None:
        """Ask the loop to end (any thread, or a signal handler)."""
        self._stop = True
        self._wake()

    def _wake(self) -> None:
        fd = self._wake_fd
        if fd is not None:
            try:
                os.eventfd_write(fd, 1)
            except OSError:    # closed by a shutdown racing with us: nothing to wake
                pass

    def close(self) -> None:
        self.stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(30)
        elif self._thread is None and self._wake_fd is not None:
            self._shutdown()                  # never served

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _shutdown(self) -> None:
        self.streamer.stop()
        for conn in list(self._conns):
            self._drop(conn, None)
        for sock in self._listeners:
            self._sel.unregister(sock)
            sock.close()
        for path, identity in self._bound.items():
            protocol.unlink_listener(path, identity)
        self._listeners, self._bound = [], {}
        if self.module.listener == self._post_event:
            self.module.listener = None
        self._sel.close()
        wake, self._wake_fd = self._wake_fd, None
        os.close(wake)

    # -- thread-safe entry points -------------------------------------------

    def call_soon(self, fn) -> None:
        """Run fn() on the loop thread."""
        self._calls.append(fn)
        self._wake()

    def _post_event(self, event: dict) -> None:
        # Called with the model's lock held: only queue (see module.py).
        self._events.append(event)
        self._wake()

    def inject_fault(self, kind: str, **params) -> None:
        """The Python API of sim.inject_fault (any thread); ProtocolError if invalid."""
        args = protocol.validate_args("sim.inject_fault", {"kind": kind, **params})
        if kind in ("link_drop", "garbage_control"):
            self.call_soon(lambda: self._transport_fault(kind, args))
        else:
            self.module.inject_fault(**args)

    def _on_wake(self, mask) -> None:
        try:
            os.eventfd_read(self._wake_fd)
        except BlockingIOError:
            pass

    def _run_calls(self) -> None:
        while self._calls:
            self._calls.popleft()()

    def _flush_events(self) -> None:
        if not self._events:
            return
        while self._events:
            event = self._events.popleft()
            for conn in list(self._conns):
                if conn.version is not None:
                    self._queue(conn, event)
        self.streamer.wake()       # a state change may start or stop frames

    # -- connections ---------------------------------------------------------

    def _accept(self, listener: socket.socket, kind: str) -> None:
        if self._dropping:
            return
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return
        sock.setblocking(False)
        conn = _Conn(sock, kind)
        held = self._control if kind == "control" else None
        if held is not None and not protocol.hung_up(held.sock):
            message = (f"another client ({held.peer}) is connected to this module's "
                       "control channel; only one at a time is served")
            log.info("refused control client %s: %s", conn.peer, message)
            with contextlib.suppress(OSError):
                protocol.send(sock, protocol.encode({"event": "error", "code": protocol.BUSY,
                                                     "message": message}))
            sock.close()
            return
        if held is not None:       # it is gone, we just had not read its end of file yet
            self._drop(held, "it hung up")
        if kind == "control":
            self._control = conn
        self._conns.append(conn)
        self._sel.register(sock, selectors.EVENT_READ, lambda mask: self._on_io(conn, mask))
        log.info("%s client %s connected", kind, conn.peer)

    def _drop(self, conn: _Conn, why: str | None) -> None:
        if conn.closed:
            return
        conn.closed = True
        if why:
            log.info("%s client %s disconnected: %s", conn.kind, conn.peer, why)
        self._conns.remove(conn)
        for _, fds in conn.outbox:
            protocol.close_fds(fds)
        conn.outbox.clear()
        self._sel.unregister(conn.sock)
        conn.sock.close()
        if conn is self._control:
            self._control = None
            self.streamer.detach()    # its doorbell belongs to a client that is gone

    def _on_io(self, conn: _Conn, mask) -> None:
        if mask & selectors.EVENT_WRITE:
            self._try_send(conn)
        if mask & selectors.EVENT_READ:
            for _ in range(64):            # then let other clients have a turn
                if conn.closed or self._dropping:
                    return
                try:
                    received = protocol.receive(conn.sock)
                except BlockingIOError:
                    return
                except OSError as exc:
                    return self._drop(conn, exc.strerror)
                if received.eof:
                    return self._drop(conn, "end of file")
                self._handle(conn, received)

    def _queue(self, conn: _Conn, message, fds=()) -> None:
        if conn.closed:
            protocol.close_fds(fds)
            return
        data = message if isinstance(message, bytes) else protocol.encode(message)
        conn.outbox.append((data, list(fds)))
        if len(conn.outbox) > MAX_QUEUED:
            return self._drop(conn, f"it left {MAX_QUEUED} messages unread")
        self._try_send(conn)

    def _try_send(self, conn: _Conn) -> None:
        while conn.outbox and not conn.closed:
            data, fds = conn.outbox[0]
            try:
                protocol.send(conn.sock, data, fds)
            except BlockingIOError:
                self._want_write(conn, True)
                return
            except OSError as exc:
                return self._drop(conn, exc.strerror)
            conn.outbox.popleft()
            protocol.close_fds(fds)
        if not conn.closed:
            self._want_write(conn, False)

    def _want_write(self, conn: _Conn, want: bool) -> None:
        if conn.want_write != want:
            conn.want_write = want
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
            self._sel.modify(conn.sock, events, lambda mask: self._on_io(conn, mask))

    # -- requests ------------------------------------------------------------

    def _handle(self, conn: _Conn, received: protocol.Received) -> None:
        fds, rid = received.fds, None
        try:
            if received.truncated:
                raise protocol.ProtocolError(
                    protocol.BAD_REQUEST, f"message exceeds {protocol.MAX_MESSAGE} bytes or "
                    f"carries more than {protocol.MAX_FDS} file descriptors")
            message = protocol.decode(received.data)
            rid = protocol.request_id_of(message)
            rid, op, args = protocol.parse_request(message)
            result = self._dispatch(conn, rid, op, args, fds)
            if result is not _DEFERRED:
                self._reply(conn, protocol.ok(rid, result[0]), result[1])
        except RequestError as exc:     # ProtocolError, ModuleError
            self._refuse(conn, rid, exc.code, exc.message, exc.argument)
        except Exception as exc:  # noqa: BLE001 - no input may end the module
            log.exception("request %s failed", rid)
            self._refuse(conn, rid, protocol.FAILED, f"the module failed internally: {exc}")
        finally:
            protocol.close_fds(fds)

    def _refuse(self, conn, rid, code, message, argument=None) -> None:
        if rid is None:
            self._queue(conn, {"event": "error", "code": code, "message": message})
        else:
            self._reply(conn, protocol.error(rid, code, message, argument))

    def _reply(self, conn: _Conn, reply: dict, fds=()) -> None:
        self._flush_events()       # events a request caused precede its reply
        try:
            data = protocol.encode(reply)
        except ValueError as exc:
            data = protocol.encode(protocol.error(reply["id"], protocol.FAILED, str(exc)))
        self._queue(conn, data, fds)

    def _dispatch(self, conn: _Conn, rid: int, op: str, args: dict, fds: list):
        """(result, fds to send) or _DEFERRED."""
        if conn.version is None and op != "hello":
            raise ModuleError(protocol.WRONG_STATE,
                              "the first request on a connection must be hello")
        if conn.kind == "sim" and op not in protocol.SIM_SOCKET_OPS:
            raise ModuleError(protocol.NOT_PERMITTED, f"{op} is only served on the control "
                              "socket; this is the simulation socket")
        m = self.module
        if op == "hello":
            conn.version = min(args["version"], protocol.VERSION)
            return {"protocol": protocol.PROTOCOL_NAME, "version": conn.version,
                    "socket": conn.kind, "module": m.identify(),
                    "state": m.state.value}, ()
        if op == "attach_ring":
            return self._attach_ring(args, fds)
        if op == "trigger_still":
            m.check_can_capture()
            self.streamer.request_still((conn, rid))
            return _DEFERRED
        if op == "stream" and args["on"] and not self.streamer.attached:
            raise ModuleError(protocol.WRONG_STATE,
                              "no frame ring is attached: send attach_ring first")
        if op == "sim.inject_fault" and args["kind"] in ("link_drop", "garbage_control"):
            return self._transport_fault(args["kind"], args), ()
        handler = {"identify": m.identify, "read_eeprom": m.read_eeprom, "power": m.power,
                   "status": self._status, "set_controls": m.set_controls, "stream": m.stream,
                   "sim.turn_focus_ring": m.turn_focus_ring, "sim.inject_fault": m.inject_fault,
                   "sim.set_scene": m.set_scene, "sim.set_ambient": m.set_ambient}[op]
        return handler(**args), ()

    def _status(self) -> dict:
        out = self.module.status()
        out["ring"] = self.streamer.ring_info()
        out["frames"] = dict(self.streamer.stats)
        return out

    def _attach_ring(self, args: dict, fds: list):
        if len(fds) != 1 or not _is_eventfd(fds[0]):
            raise ModuleError(protocol.BAD_REQUEST, "attach_ring needs exactly one file "
                              f"descriptor, the consumer's doorbell eventfd (got {len(fds)})")
        region_fd, geometry = self.streamer.attach_ring(fds[0], args.get("slot_count", 4))
        return geometry, (region_fd,)      # closed once sent

    def _still_done(self, token, result: dict | None, error: str | None) -> None:
        conn, rid = token            # from the streamer thread: answer on the loop

        def answer():
            if self._dropping:       # link_drop: the module has vanished, nothing goes out
                return
            if result is not None:
                self._reply(conn, protocol.ok(rid, result))
            else:
                self._reply(conn, protocol.error(rid, protocol.FAILED, f"no still: {error}"))
        self.call_soon(answer)

    # -- transport faults ----------------------------------------------------

    def _transport_fault(self, kind: str, args: dict) -> dict:
        if kind == "link_drop":
            self._dropping = True             # read nothing more from anyone
            self.call_soon(self._drop_link)   # after the reply has gone out
            return {"kind": kind}
        variant = args.get("variant", "not-json")
        if self._control is None:
            return {"kind": kind, "variant": variant, "sent": False}
        conn = self._control       # sent after the reply, on the loop
        self.call_soon(lambda: self._queue(conn, protocol.GARBAGE[variant]))
        return {"kind": kind, "variant": variant, "sent": True}

    def _drop_link(self) -> None:
        """The module vanishes: no more frames, every connection and listener closed."""
        log.warning("link drop (injected fault): the module vanishes")
        self.streamer.stop()
        self.module.listener = None
        self.module.power(False)
        self.dropped.set()
        self._stop = True


def _is_eventfd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    except OSError:
        return False
