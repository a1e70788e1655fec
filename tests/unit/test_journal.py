"""modcamd's systemd edge: log lines with structured fields (on a stream, and
over journald's native protocol), and sd_notify through a real datagram
socket standing in for PID 1's $NOTIFY_SOCKET, with the watchdog fed from a
running GLib main loop."""
import io
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from gi.repository import GLib
from systemd import daemon
from systemd import journal as sd_journal

from modcam import journal

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def modcam_logger():
    """setup_logging() changes the process-wide "modcam" logger: put it back."""
    root = logging.getLogger("modcam")
    saved = root.handlers[:], root.level, root.propagate
    yield root
    root.handlers[:], root.level, root.propagate = saved


# --- log lines -------------------------------------------------------------

def test_fields_names_and_skips_none():
    assert journal.fields(serial="MC0001", state="ready") == {
        "MODCAM_SERIAL": "MC0001", "MODCAM_STATE": "ready"}
    assert journal.fields(serial="MC0001", frames=12, reason=None) == {
        "MODCAM_SERIAL": "MC0001", "MODCAM_FRAMES": 12}
    assert journal.fields() == {}
    with pytest.raises(ValueError, match="cannot be a journal field name"):
        journal.fields(**{"température": 40})


def test_stream_line_carries_the_fields(modcam_logger):
    out = io.StringIO()
    journal.setup_logging("info", stream=out)
    log = logging.getLogger("modcam.module")
    log.info("module %s booted", "MC0001", extra=journal.fields(serial="MC0001", state="ready"))
    log.warning("link lost", extra=journal.fields(serial="MC0001", reason="link drop"))
    log.debug("not at info level")
    log.error("no fields")
    assert out.getvalue().splitlines() == [
        "modcamd: INFO module MC0001 booted [MODCAM_SERIAL=MC0001 MODCAM_STATE=ready]",
        "modcamd: WARNING link lost [MODCAM_SERIAL=MC0001 MODCAM_REASON='link drop']",
        "modcamd: ERROR no fields",
    ]


def test_setup_twice_replaces_and_traceback_follows(modcam_logger):
    first, second = io.StringIO(), io.StringIO()
    journal.setup_logging("error", stream=first)
    journal.setup_logging("DEBUG", stream=second)
    assert len(modcam_logger.handlers) == 1 and modcam_logger.propagate is False
    log = logging.getLogger("modcam.x")
    log.debug("now at debug")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("capture failed", extra=journal.fields(serial="MC0002"))
    assert first.getvalue() == ""
    lines = second.getvalue().splitlines()
    assert lines[0] == "modcamd: DEBUG now at debug"
    assert lines[1] == "modcamd: ERROR capture failed [MODCAM_SERIAL=MC0002]"
    assert lines[2].startswith("Traceback") and lines[-1] == "RuntimeError: boom"


def test_unknown_level_is_a_sentence():
    with pytest.raises(ValueError, match="log level 'verbose' is not one of debug, info, warning, error"):
        journal.setup_logging("verbose", stream=io.StringIO())


def _journal_stream_of(f):
    st = os.fstat(f.fileno())
    return f"{st.st_dev}:{st.st_ino}"


def test_journal_only_when_our_stream_is_the_journal_stream(monkeypatch, tmp_path, modcam_logger):
    # A file stands in for the stream systemd connects to journald.
    with open(tmp_path / "stderr", "w") as stream, open(tmp_path / "other", "w") as other:
        monkeypatch.setenv("JOURNAL_STREAM", _journal_stream_of(stream))
        assert journal.stream_is_journal(stream)
        journal.setup_logging(stream=stream)
        assert isinstance(modcam_logger.handlers[0], sd_journal.JournalHandler)
        journal.setup_logging(stream=stream, force_stderr=True)
        assert type(modcam_logger.handlers[0]) is logging.StreamHandler
        # Inherited from a parent whose stderr was the journal, ours is not.
        assert not journal.stream_is_journal(other)
        assert not journal.stream_is_journal(io.StringIO())
        monkeypatch.setenv("JOURNAL_STREAM", "garbage")
        assert not journal.stream_is_journal(stream)
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not journal.stream_is_journal(stream)


def test_journal_handler_sends_fields_not_the_record(monkeypatch, tmp_path, modcam_logger):
    sent = []
    # sendv is the C entry point (sd_journal_sendv) under journal.send().
    monkeypatch.setattr(sd_journal, "sendv", lambda *lines: sent.append(lines))
    with open(tmp_path / "stderr", "w") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", _journal_stream_of(stream))
        journal.setup_logging(stream=stream)
        logging.getLogger("modcam.manager").warning(
            "module %s removed", "MC0001", extra=journal.fields(serial="MC0001", state="off"))
    fields = dict(line.split("=", 1) for line in sent[0])
    assert fields["MESSAGE"] == "module MC0001 removed"
    assert fields["PRIORITY"] == "4" and fields["SYSLOG_IDENTIFIER"] == "modcamd"
    assert fields["MODCAM_SERIAL"] == "MC0001" and fields["MODCAM_STATE"] == "off"
    assert fields["LOGGER"] == "modcam.manager"
    assert not [k for k in fields if not k.isupper()]  # msg, args, levelname… stay home


def _parse_native(data: bytes) -> dict:
    """journald's native protocol: KEY=value\\n, or KEY\\n<le64 size><bytes>\\n."""
    out, i = {}, 0
    while i < len(data):
        end = data.index(b"\n", i)
        line = data[i:end]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            i = end + 1
        else:
            key, (size,) = line, struct.unpack_from("<Q", data, end + 1)
            value = data[end + 9:end + 9 + size]
            i = end + 9 + size + 1
        out[key.decode()] = value.decode()
    return out


def _unshare_prefix():
    if shutil.which("unshare") is None:
        return None
    prefix = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        prefix[1:1] = ["--user", "--map-root-user"]
    probe = subprocess.run(prefix + ["true"], capture_output=True)
    return prefix if probe.returncode == 0 else None


def test_over_the_wire_to_journald(tmp_path):
    """The real sd_journal_sendv() path, without journald: a child process
    in its own mount namespace sees our datagram socket as
    /run/systemd/journal/socket (libsystemd's path is compiled in)."""
    prefix = _unshare_prefix()
    if prefix is None:
        pytest.skip("needs unshare and a mount namespace to stand in for journald")
    (tmp_path / "systemd" / "journal").mkdir(parents=True)
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "systemd" / "journal" / "socket"))
    receiver.settimeout(10)
    child = textwrap.dedent(f"""
        import logging, os, sys
        sys.path.insert(0, {str(REPO / "daemon")!r})
        from modcam import journal
        st = os.fstat(2)                       # as systemd would set it for us
        os.environ["JOURNAL_STREAM"] = f"{{st.st_dev}}:{{st.st_ino}}"
        journal.setup_logging("info")
        log = logging.getLogger("modcam.module")
        log.info("module booted", extra=journal.fields(serial="MC0001", state="ready"))
        try:
            1 / 0
        except ZeroDivisionError:
            log.exception("capture failed", extra=journal.fields(serial="MC0001"))
    """)
    script = 'mount --bind "$0" /run && exec "$1" -c "$2"'
    done = subprocess.run(prefix + ["sh", "-c", script, str(tmp_path), sys.executable, child],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""                   # nothing went to the stream instead
    booted = _parse_native(receiver.recv(1 << 16))
    assert booted["MESSAGE"] == "module booted" and booted["PRIORITY"] == "6"
    assert booted["SYSLOG_IDENTIFIER"] == "modcamd"
    assert booted["MODCAM_SERIAL"] == "MC0001" and booted["MODCAM_STATE"] == "ready"
    assert "msg" not in booted and "levelname" not in booted
    failed = _parse_native(receiver.recv(1 << 16))
    # One entry with the traceback inside, not one entry per line.
    assert failed["MESSAGE"].startswith("capture failed\nTraceback")
    assert failed["PRIORITY"] == "3" and failed["MODCAM_SERIAL"] == "MC0001"
    receiver.close()


# --- sd_notify ---------------------------------------------------------------

class NotifySocket:
    """What PID 1 listens on; keep draining it (see Notifier's docstring)."""

    def __init__(self, address):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)
        self.arrivals = []                     # (monotonic time, message)

    def drain(self):
        while True:
            try:
                self.arrivals.append((time.monotonic(), self.sock.recv(4096).decode()))
            except BlockingIOError:
                return [m for _, m in self.arrivals]

    def close(self):
        self.sock.close()


@pytest.fixture
def notify_socket(monkeypatch, tmp_path):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    server = NotifySocket(str(tmp_path / "notify"))
    # os.environ assignment calls putenv(), and libsystemd getenv()s at each call.
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    yield server
    server.close()


def run_main_loop(seconds, server):
    loop = GLib.MainLoop()
    # Drain as datagrams arrive, as PID 1 would, and note when they do.
    watch = GLib.unix_fd_add_full(GLib.PRIORITY_DEFAULT, server.sock.fileno(), GLib.IOCondition.IN,
                                  lambda *_: server.drain() is not None)
    GLib.timeout_add(int(seconds * 1000), loop.quit)
    loop.run()
    GLib.source_remove(watch)
    return server.drain()


def test_ready_once_status_deduplicated_stopping(notify_socket):
    n = journal.Notifier()
    n.ready()
    n.ready()
    n.status("waiting for a module")
    n.status("waiting for a module")
    n.status("1 module: MC0001 ready")
    n.stopping()
    assert notify_socket.drain() == ["READY=1", "STATUS=waiting for a module",
                                     "STATUS=1 module: MC0001 ready", "STOPPING=1"]


def test_environment_is_read_at_each_call(notify_socket, monkeypatch):
    n = journal.Notifier()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert daemon.notify("READY=1") is False   # no systemd: a quiet no-op
    n.status("alone")
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.sock.getsockname())
    n.status("supervised")
    assert notify_socket.drain() == ["STATUS=supervised"]


def test_abstract_socket(monkeypatch):
    name = f"modcam-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    server = NotifySocket("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        journal.Notifier().ready()
        assert server.drain() == ["READY=1"]
    finally:
        server.close()


@pytest.mark.parametrize("address", ["/nonexistent/modcam/notify", "relative-path"])
def test_failure_is_logged_never_raised(monkeypatch, caplog, address):
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setattr(logging.getLogger("modcam"), "propagate", True)  # to caplog
    caplog.set_level(logging.DEBUG, logger="modcam.journal")
    journal.Notifier().ready()
    assert "sd_notify 'READY=1' failed" in caplog.text


def test_watchdog_interval_from_the_environment(monkeypatch):
    n = journal.Notifier()
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert n.watchdog_interval is None
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    assert n.watchdog_interval == pytest.approx(0.1)
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert n.watchdog_interval == pytest.approx(0.1)
    monkeypatch.setenv("WATCHDOG_PID", str(os.getppid()))
    assert n.watchdog_interval is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("0", "soon", ""):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert n.watchdog_interval is None


def test_watchdog_fed_from_the_main_loop(notify_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s
    n = journal.Notifier()
    try:
        n.watchdog_start()
        n.watchdog_start()                         # no second timer
        got = run_main_loop(0.5, notify_socket)
    finally:
        n.close()
    assert set(got) == {"WATCHDOG=1"}
    assert 2 <= len(got) <= 7, got
    times = [t for t, _ in notify_socket.arrivals]
    gaps = sorted(b - a for a, b in zip(times, times[1:]))
    assert 0.05 <= gaps[len(gaps) // 2] <= 0.3, gaps
    # close() removed the timer: the loop runs on, the watchdog hears nothing.
    assert run_main_loop(0.25, notify_socket) == got


@pytest.mark.parametrize("watchdog_pid", [None, "other"])
def test_no_watchdog_unless_asked_for_this_process(notify_socket, monkeypatch, watchdog_pid):
    if watchdog_pid == "other":
        monkeypatch.setenv("WATCHDOG_USEC", "200000")
        monkeypatch.setenv("WATCHDOG_PID", str(os.getppid()))
    n = journal.Notifier()
    try:
        n.watchdog_start()
        assert run_main_loop(0.3, notify_socket) == []
    finally:
        n.close()


def test_a_receiver_that_stops_reading_never_blocks_the_daemon(monkeypatch, tmp_path):
    """The notify socket's queue fills (nobody reads): notifications are dropped, not waited on."""
    import socket
    import time
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(tmp_path / "stuck"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "stuck"))
    notifier = journal.Notifier()
    t0 = time.monotonic()
    for i in range(200):                     # far beyond net.unix.max_dgram_qlen
        notifier.status(f"status {i}")
    assert time.monotonic() - t0 < 2.0
    first = server.recv(4096).decode()
    assert first == "STATUS=status 0"
    server.close()
