"""modcamctl's daemon commands: list, info, monitor, claim, set, focus,
autofocus and capture, on top of modcam.client.

ctl.py owns the command line (arguments and their values, help, exit
codes); this module owns what each command does and prints, and the
progress shown on stderr while a call waits for a boot or the ISP.
Commands that wait run the blocking call in a worker thread while the main
thread runs a GLib main loop, so that PropertiesChanged signals (the
module's State) arrive during the call and Ctrl-C/SIGTERM stay prompt.
"""
from __future__ import annotations

import json
import signal
import sys
import threading
import time
from datetime import datetime

from gi.repository import Gio, GLib

from modcam import names
from modcam.client import ModcamClientError, connect, format_for_path

_STATE_WORDS = {"booting": "booting…", "capturing": "capturing…"}
_UNITS = {"ExposureTime": "µs", "LensPosition": "dioptres", "Temperature": "°C",
          "PowerDraw": "mW", "IdleTimeout": "s"}


class UsageError(ValueError):
    """A command line that cannot be run as given (exit status 2)."""


# --- values from the command line (CONTROL=VALUE is parsed in ctl.py) ---------

def capture_format(output: str, given: str | None) -> str:
    """The format to capture in: --format, else from the output's suffix."""
    if given:
        return given
    found = None if output == "-" else format_for_path(output)
    if found is None:
        raise UsageError(f"cannot tell the format from {output!r}: end it in .jpg, .jpeg, "
                         ".png or .dng, or give --format")
    return found


# --- plain-text presentation -------------------------------------------------

def distance(dioptres: float) -> str:
    return "∞" if dioptres <= 0 else f"{1 / dioptres:.2f} m"


def describe(name: str, value) -> str:
    if name == "Sensor" and {"width", "height"} <= set(value):
        return (f"{value['width']}x{value['height']} {value.get('cfa', '')} "
                f"{value.get('bit_depth', '?')}-bit, black level {value.get('black_level', '?')}"
                f", readout modes {'/'.join(value.get('readout_modes', []))}")
    if name == "Lens" and "focal_length_mm" in value:
        near = value.get("lens_position_max", 0.0)
        return (f"{value['focal_length_mm']:g} mm f/{value.get('aperture_min', 0):g}–"
                f"f/{value.get('aperture_max', 0):g}, focus {distance(near)} to ∞")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return "; ".join(f"{k}={describe(k, v)}" for k, v in sorted(value.items())) or "-"
    if isinstance(value, list):
        return ", ".join(describe(name, v) for v in value) or "none"
    if isinstance(value, float):
        value = f"{value:.3g}" if name != "LensPosition" else f"{value:.2f}"
    text = f"{value} {_UNITS[name]}" if name in _UNITS else str(value)
    if name == "LensPosition":
        text += f" ({distance(float(value))})"
    return text or "-"


def file_size(size: int) -> str:
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _timestamp() -> str:
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


# --- waiting without blocking signals ----------------------------------------

class Loop:
    """A GLib main loop that ends on stop(), a deadline, SIGINT or SIGTERM.

    Used as a context manager for a whole command, so that a signal that
    arrives between two waits (say, right after `claim` printed "ready") is
    not lost to the default handler: the next run() returns at once."""

    def __init__(self):
        self.loop = GLib.MainLoop()
        self.signalled: int | None = None
        self._old_handlers: dict = {}

    def __enter__(self) -> "Loop":
        # Python handlers, not GLib.unix_signal_add: PyGObject wakes its loop
        # for them, and they leave no C-level handler behind for later code.
        self._old_handlers = {s: signal.signal(s, self._on_signal)
                              for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *_exc_info) -> None:
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)

    def stop(self, *_args) -> bool:
        self.loop.quit()
        return GLib.SOURCE_REMOVE

    def _on_signal(self, signum, _frame) -> None:
        self.signalled = signum
        self.loop.quit()

    def run(self, seconds: float | None = None) -> None:
        if self.signalled is not None:
            return
        deadline = None if seconds is None else GLib.timeout_add(int(seconds * 1000), self.stop)
        try:
            self.loop.run()
        finally:
            if deadline is not None and GLib.MainContext.default().find_source_by_id(deadline):
                GLib.source_remove(deadline)

    def call(self, fn, cancellable: Gio.Cancellable | None = None):
        """fn() in a worker thread while this loop runs; its result or exception.
        Interrupted: cancel, wait briefly for fn to clean up, KeyboardInterrupt."""
        box: dict = {}
        done = threading.Event()

        def work():
            try:
                box["result"] = fn()
            except BaseException as exc:   # handed to the main thread as is
                box["error"] = exc
            done.set()
            GLib.idle_add(self.stop)
        worker = threading.Thread(target=work, daemon=True, name="modcamctl-call")
        worker.start()
        while not done.is_set() and self.signalled is None:
            self.run()
        if not done.is_set():
            if cancellable is not None:
                cancellable.cancel()
                worker.join(5.0)           # capture_to_file removes its temporary file
            raise KeyboardInterrupt
        worker.join()
        if "error" in box:
            raise box["error"]
        return box["result"]


class Progress:
    """The module's State on stderr while a long call runs: a spinner line on a
    terminal, one plain line per state otherwise (logs, scripts)."""

    FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, module, serial: str, stream=None):
        self.stream = stream or sys.stderr
        self.serial = serial
        self.tty = self.stream.isatty()
        self.t0 = time.monotonic()
        self.state = ""
        self._frame = 0
        self._sub = module.on_properties_changed(self._changed)
        self._tick_id = GLib.timeout_add(100, self._tick) if self.tty else None

    def _changed(self, changed: dict, _invalidated) -> None:
        if "State" in changed:
            self.state = _STATE_WORDS.get(changed["State"], changed["State"])
            if not self.tty:
                print(f"{self.serial}: {self.state}", file=self.stream, flush=True)

    def _tick(self) -> bool:
        self._frame = (self._frame + 1) % len(self.FRAMES)
        elapsed = time.monotonic() - self.t0
        self.stream.write(f"\r\x1b[K{self.FRAMES[self._frame]} {self.serial}: "
                          f"{self.state or 'waiting…'} {elapsed:.1f} s")
        self.stream.flush()
        return GLib.SOURCE_CONTINUE

    def finish(self, text: str | None) -> None:
        if self._sub is None:
            return
        self._sub.unsubscribe()
        self._sub = None
        if self._tick_id is not None:
            GLib.source_remove(self._tick_id)
            self.stream.write("\r\x1b[K")
        if text:
            print(f"{self.serial}: {text}", file=self.stream, flush=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, _exc, _tb) -> None:
        if exc_type is None:
            self.finish(f"done in {time.monotonic() - self.t0:.2f} s")
        else:
            self.finish(None)


# --- the commands --------------------------------------------------------------

def _rows(modules):
    for m in modules:
        try:
            props = m.properties()
        except ModcamClientError as exc:
            if exc.name == "Removed":      # unplugged between GetModules and now
                continue
            raise
        yield props["Serial"], props["State"], props["Model"], props["Firmware"], m.path


def cmd_list(args) -> int:
    rows = list(_rows(connect(args.bus).modules()))
    widths = [max((len(r[i]) for r in rows), default=0) for i in range(4)]
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)) + "  " + row[4])
    return 0


def cmd_info(args) -> int:
    client = connect(args.bus)
    module = client.module(args.module)
    props = module.properties()
    if args.json:
        print(json.dumps({"path": module.path, "daemon_version": client.version, **props},
                         indent=2, ensure_ascii=False))
        return 0
    print(f"{props.get('Serial', '?')}  {module.path}  (modcamd {client.version})")
    width = max(map(len, props))
    for name, value in props.items():
        print(f"  {name.ljust(width)}  {describe(name, value)}")
    return 0


def cmd_set(args) -> int:
    connect(args.bus).module(args.module).set_controls(**dict(args.assignments))
    return 0


def cmd_focus(args) -> int:
    module = connect(args.bus).module(args.module)
    module.set_controls(LensPosition=args.position, AfMode="manual")
    print(f"{module.serial}: focus {describe('LensPosition', args.position)}, manual")
    return 0


def cmd_autofocus(args) -> int:
    module = connect(args.bus).module(args.module)
    serial = module.serial
    with Loop() as loop, Progress(module, serial):
        result = loop.call(module.autofocus)
    if args.json:
        print(json.dumps(result))
        return 0 if result.get("success") else 1
    outcome = "success" if result.get("success") else "no sharp focus found"
    print(f"{serial}: position {describe('LensPosition', result.get('position', 0.0))}, "
          f"focus measure {result.get('focus_measure', 0.0):.4g}, "
          f"{result.get('frames', 0)} frames, {outcome}")
    return 0 if result.get("success") else 1


def cmd_capture(args) -> int:
    fmt = capture_format(args.output, args.format)
    if args.output == "-" and sys.stdout.isatty():
        raise UsageError("refusing to write a picture to a terminal; "
                         "redirect stdout or use -o FILE")
    module = connect(args.bus).module(args.module)
    serial = module.serial
    options = dict(format=fmt, readout_mode=args.mode, quality=args.quality,
                   **dict(args.controls or ()))
    cancel = Gio.Cancellable()
    t0 = time.monotonic()
    if args.output == "-":
        def shoot():
            return module.capture_to_fd(1, cancellable=cancel, **options)
    else:
        def shoot():
            return module.capture_to_file(args.output, cancellable=cancel, **options)
    with Loop() as loop, Progress(module, serial):
        result = loop.call(shoot, cancel)
    summary = [fmt.upper(), file_size(result.get("size", 0)), f"module {serial}"]
    if "width" in result and "height" in result:
        summary.insert(1, f"{result['width']}x{result['height']}")
    for key, text in (("exposure_time", "{} µs"), ("analogue_gain", "gain {:.2f}"),
                      ("aperture", "f/{:.1f}"), ("lens_position", "{:.2f} dioptres")):
        if key in result:
            summary.append(text.format(result[key]))
    where = "stdout" if args.output == "-" else args.output
    print(f"{where}: {', '.join(summary)}, in {time.monotonic() - t0:.2f} s",
          file=sys.stderr if args.output == "-" else sys.stdout)
    return 0


def cmd_claim(args) -> int:
    client = connect(args.bus)
    module = client.module(args.module)
    serial, before = module.serial, module.state
    with Loop() as loop:
        gone = []

        def removed(path: str) -> None:
            if path == module.path:
                gone.append(path)
                loop.stop()
        watch = client.watch(on_removed=removed)
        t0 = time.monotonic()
        progress = Progress(module, serial)
        try:
            loop.call(module.claim)
        finally:
            progress.finish(None)
        took = time.monotonic() - t0
        how = f"booted in {took:.2f} s" if before in ("off", "booting") else "it was already on"
        hold = f"for {args.seconds:g} s" if args.seconds is not None else "until Ctrl-C"
        print(f"{serial}: ready ({how}); holding it {hold}", flush=True)
        held = time.monotonic()
        loop.run(args.seconds)
        watch.unsubscribe()
    if gone:
        raise ModcamClientError("Removed", f"module {serial} was unplugged while claimed")
    module.release()
    print(f"{serial}: released after {time.monotonic() - held:.1f} s", flush=True)
    return 0


def cmd_monitor(args) -> int:
    client = connect(args.bus)
    with Loop() as loop:
        monitor = Monitor(client, loop, args)
        subs = [client.watch(monitor.added, monitor.removed),
                client.watch_properties(monitor.changed)]
        owner = client.bus.watch_name(names.BUS_NAME, name_vanished=monitor.vanished)
        print(f"modcamctl: watching modcamd {client.version} on {client.bus_label}; "
              "Ctrl-C to stop", file=sys.stderr, flush=True)
        loop.run(args.timeout)
        owner.unwatch()
        for sub in subs:
            sub.unsubscribe()
    if monitor.daemon_left:
        raise ModcamClientError("NotRunning", f"modcamd left {client.bus_label}")
    return 0


class Monitor:
    """monitor's events: one line (or JSON object) each, counted for --count."""

    def __init__(self, client, loop: Loop, args):
        self.loop, self.args = loop, args
        self.count = 0
        self.daemon_left = False
        # Serials by object path, so that an unplug line can still name its module.
        self.serials = {row[4]: row[0] for row in _rows(client.modules())}

    def emit(self, event: str, path: str, text: str, **fields) -> None:
        serial = self.serials.get(path) or path.rsplit("/", 1)[-1]
        if self.args.module and self.args.module != serial:
            return
        now = _timestamp()
        if self.args.json:
            print(json.dumps({"time": now, "event": event, "serial": serial, "module": path,
                              **fields}, ensure_ascii=False), flush=True)
        else:
            print(f"{now}  {serial}  {text}", flush=True)
        self.count += 1
        if self.args.count and self.count >= self.args.count:
            self.loop.stop()

    def added(self, module) -> None:
        try:
            props = module.properties()
        except ModcamClientError:      # already gone again: its removal follows
            props = {}
        self.serials[module.path] = props.get("Serial", "")
        self.emit("added", module.path, f"plugged in: {props.get('Model', '?')}, firmware "
                  f"{props.get('Firmware', '?')} ({module.path})", model=props.get("Model"),
                  firmware=props.get("Firmware"), state=props.get("State"))

    def removed(self, path: str) -> None:
        self.emit("removed", path, "unplugged")
        self.serials.pop(path, None)

    def changed(self, path: str, props: dict, _invalidated) -> None:
        if "State" in props:
            reason = props.get("StateReason") or ""
            self.emit("state", path, f"state {props['State']}" + (f": {reason}" if reason else ""),
                      state=props["State"], reason=reason)
        if "LensPosition" in props or "FocusMode" in props:
            fields = {"lens_position": props.get("LensPosition"),
                      "focus_mode": props.get("FocusMode")}
            fields = {k: v for k, v in fields.items() if v is not None}
            words = [describe("LensPosition", fields["lens_position"])] \
                if "lens_position" in fields else []
            self.emit("focus", path, "focus " + ", ".join(words + [props.get("FocusMode", "")])
                      .strip(", "), **fields)
        if "Temperature" in props:
            self.emit("temperature", path, f"temperature {props['Temperature']:.1f} °C",
                      temperature=props["Temperature"])
        if "Clients" in props:
            self.emit("clients", path, "claimed by " + (", ".join(props["Clients"]) or "nobody"),
                      clients=props["Clients"])

    def vanished(self) -> None:
        self.daemon_left = True
        self.loop.stop()
