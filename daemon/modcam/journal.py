"""modcamd's edge towards systemd: where its log lines go, and sd_notify.

`setup_logging()` configures the "modcam" logger tree once per process: to
journald through its native protocol when systemd connected our stderr to
the journal, otherwise to a stream as one compact line per record.  Call
sites attach structured fields with `extra=journal.fields(serial=…, state=…)`;
they become journal fields (`journalctl MODCAM_SERIAL=MC0001`) or the tail
of the stderr line.

`Notifier` tells the service manager we are ready, what we are doing,
that we are stopping, and keeps its watchdog fed from the GLib main loop.
Without systemd (tests, demos) both fall back quietly: sd_notify is a no-op
when $NOTIFY_SOCKET is unset, and logs go to stderr.
"""
import logging
import os
import re
import shlex
import socket
import sys

from systemd import journal

log = logging.getLogger(__name__)

IDENTIFIER = "modcamd"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO,
          "warning": logging.WARNING, "error": logging.ERROR}
FIELD_PREFIX = "MODCAM_"
# journald keeps only fields named like this (journal_field_valid()).
_FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}\Z")


def fields(serial=None, state=None, **more) -> dict:
    """The `extra=` dict of a log call: MODCAM_SERIAL, MODCAM_STATE and
    MODCAM_<NAME> for each keyword; None values are left out."""
    out = {}
    for name, value in (("serial", serial), ("state", state), *more.items()):
        key = FIELD_PREFIX + name.upper()
        if not _FIELD_NAME.match(key):
            raise ValueError(f"{name!r} cannot be a journal field name ({key})")
        if value is not None:
            out[key] = value
    return out


def _record_fields(record) -> dict:
    return {k: v for k, v in vars(record).items() if k.startswith(FIELD_PREFIX)}


class _LineFormatter(logging.Formatter):
    """`modcamd: INFO module booted [MODCAM_SERIAL=MC0001 MODCAM_STATE=ready]`;
    a traceback, if any, follows on the next lines (logging.Formatter)."""

    def formatMessage(self, record):
        line = f"{IDENTIFIER}: {record.levelname} {record.message}"
        extra = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in _record_fields(record).items())
        return f"{line} [{extra}]" if extra else line


def _send_valid_fields(MESSAGE, **kwargs):
    # systemd-python 235's JournalHandler passes the whole LogRecord __dict__
    # (msg, args, levelname, exc_info…) as fields and leaves it to journald to
    # drop the lower-case names.  Send only names journald keeps: smaller
    # datagrams, and what we send is what `journalctl -o verbose` shows.
    journal.send(MESSAGE, **{k: v for k, v in kwargs.items() if _FIELD_NAME.match(k)})


def stream_is_journal(stream) -> bool:
    """True when `stream` is the stream systemd connected to journald.

    systemd sets $JOURNAL_STREAM=<st_dev>:<st_ino> of the stream it gave us
    (systemd.exec(5)).  The variable alone is not enough: a child inherits it
    even when its stderr was redirected, so compare with what the stream is
    now.  We do not choose the journal merely because
    /run/systemd/journal/socket exists: that says journald runs on this
    machine, not that our output belongs there, and modcamd started from a
    terminal or by the test suite must keep logging where it was started.
    """
    try:
        dev, ino = (int(part) for part in os.environ["JOURNAL_STREAM"].split(":"))
        st = os.fstat(stream.fileno())
    except (KeyError, ValueError, AttributeError, OSError):  # io.UnsupportedOperation too
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def setup_logging(level: str = "info", *, stream=None, force_stderr: bool = False) -> None:
    """Send the "modcam" logger tree to the journal or to `stream`
    (sys.stderr at call time by default).  Calling again replaces what the
    previous call installed."""
    try:
        levelno = LEVELS[level.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}") from None
    stream = sys.stderr if stream is None else stream
    root = logging.getLogger("modcam")
    for old in [h for h in root.handlers if getattr(h, "_modcam_journal", False)]:
        root.removeHandler(old)
        old.close()
    if not force_stderr and stream_is_journal(stream):
        # Native protocol rather than lines on the stream: priority and the
        # MODCAM_* fields arrive as fields, and multi-line tracebacks stay
        # one entry.
        handler = journal.JournalHandler(sender_function=_send_valid_fields,
                                         SYSLOG_IDENTIFIER=IDENTIFIER)
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(_LineFormatter())
    handler._modcam_journal = True
    root.addHandler(handler)
    root.setLevel(levelno)
    # Our handler is the only way out: a library's logging.basicConfig() on
    # the root logger would otherwise print every line twice.
    root.propagate = False


class Notifier:
    """sd_notify(3) for modcamd.  No method raises: the service manager is a
    spectator, and a failed notification is logged at debug and forgotten.

    $NOTIFY_SOCKET is read at each call (a path or an "@abstract" name);
    unset means not under systemd.  The datagram is sent without blocking:
    systemd.daemon.notify() uses a blocking sendmsg() while holding the GIL,
    so a receiver that stopped reading (its queue, net.unix.max_dgram_qlen,
    full) would stop the whole daemon; here that notification is dropped.
    """

    def __init__(self):
        self._ready = False
        self._status = None
        self._watchdog_source = None

    def _notify(self, message: str) -> bool:
        address = os.environ.get("NOTIFY_SOCKET")
        if not address:
            return False
        if address.startswith("@"):
            address = "\0" + address[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(message.encode(), socket.MSG_DONTWAIT, address)
            return True
        except OSError as exc:  # a full queue, a bad NOTIFY_SOCKET, no receiver
            log.debug("sd_notify %r failed: %s", message, exc)
            return False

    def ready(self) -> None:
        """READY=1, once: startup is over (Type=notify)."""
        if not self._ready:
            self._ready = True
            self._notify("READY=1")

    def status(self, text: str) -> None:
        """STATUS=text, shown by `systemctl status`; repeats are not sent."""
        if text != self._status:
            self._status = text
            self._notify(f"STATUS={text}")

    def stopping(self) -> None:
        self._notify("STOPPING=1")

    @property
    def watchdog_interval(self):
        """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC, as
        sd_watchdog_enabled(3) advises), or None when systemd wants none
        from this process."""
        pid = os.environ.get("WATCHDOG_PID")
        try:
            usec = int(os.environ.get("WATCHDOG_USEC", ""))
            if pid is not None and int(pid) != os.getpid():
                return None  # meant for another process (e.g. our parent)
        except ValueError:
            return None
        return usec / 2e6 if usec > 0 else None

    def watchdog_start(self) -> None:
        """Feed the watchdog from a GLib timeout on the default main context.

        On purpose not from a thread: the ping only goes out while the main
        loop dispatches, so a hung or blocked loop stops feeding it and
        systemd restarts us, which is the point of the watchdog.
        """
        interval = self.watchdog_interval
        if interval is None or self._watchdog_source is not None:
            return
        from gi.repository import GLib  # here: logging alone (modcamctl) needs no GLib

        def feed():
            self._notify("WATCHDOG=1")
            return GLib.SOURCE_CONTINUE

        self._watchdog_source = GLib.timeout_add(max(1, round(interval * 1000)), feed)
        log.debug("feeding the systemd watchdog every %.3f s", interval)

    def close(self) -> None:
        """Stop feeding the watchdog (call before leaving the main loop)."""
        if self._watchdog_source is not None:
            from gi.repository import GLib
            GLib.source_remove(self._watchdog_source)
            self._watchdog_source = None
