"""The K client threads of a stress run: each on its own bus connection,
following its seeded ClientScript against whichever module is attached.

Every outcome is counted in the shared Tally: a call either succeeds, or
fails with one of the documented errors (org.modcam.Camera1.Error.*), or is
undocumented (anything else, by name). Successful DNG captures are checked
by the Validator; every capture file is deleted at once.
"""
from __future__ import annotations

import collections
import os
import threading
import time

from modcam.client import Module, ModcamClientError, connect
from modcam.stress.plan import ClientScript
from modcam.stress.validate import Validator

HANG_SECONDS = 20.0       # a call slower than this counts as a hang, whatever it returns


class Tally:
    """Counters and latency samples shared by the driver and the clients."""

    def __init__(self):
        self._lock = threading.Lock()
        self.counts: collections.Counter = collections.Counter()
        self.undocumented: collections.Counter = collections.Counter()
        self.documented: collections.Counter = collections.Counter()
        self.examples: dict[str, list[str]] = {}    # "Method:Error" -> its first messages
        self.latency: dict[str, list[float]] = collections.defaultdict(list)
        self.invalid: list[str] = []
        self.in_flight: collections.Counter = collections.Counter()   # method -> calls now

    def begin(self, method: str) -> None:
        with self._lock:
            self.in_flight[method] += 1

    def end(self, method: str) -> None:
        with self._lock:
            self.in_flight[method] -= 1

    def busy_with(self, method: str) -> bool:
        with self._lock:
            return self.in_flight[method] > 0

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def sample(self, key: str, seconds: float) -> None:
        with self._lock:
            self.latency[key].append(seconds)

    def error(self, method: str, exc: BaseException) -> None:
        with self._lock:
            if isinstance(exc, ModcamClientError) and exc.documented:
                key = f"{method}:{exc.name}"
                self.documented[key] += 1
                seen = self.examples.setdefault(key, [])
                if len(seen) < 3 and str(exc)[:200] not in seen:
                    seen.append(str(exc)[:200])
            else:
                name = exc.name if isinstance(exc, ModcamClientError) else type(exc).__name__
                self.undocumented[f"{method}:{name}: {str(exc)[:120]}"] += 1

    def invalid_capture(self, why: str) -> None:
        with self._lock:
            self.counts["captures_invalid"] += 1
            if len(self.invalid) < 50:
                self.invalid.append(why)


def capture_and_check(module: Module, tally: Tally, validator: Validator, formats,
                      readout_mode: str | None = None) -> dict | None:
    """One Capture, counted; a DNG among the results is validated; files deleted."""
    t0 = time.monotonic()
    tally.begin("Capture")
    try:
        result = module.capture(formats=formats, readout_mode=readout_mode)
    except ModcamClientError as exc:
        tally.error("Capture", exc)
        tally.count("captures_failed_documented" if exc.documented
                    else "captures_failed_undocumented")
        return None
    finally:
        tally.end("Capture")
        if time.monotonic() - t0 > HANG_SECONDS:
            tally.count("slow_calls")
    tally.sample("capture", time.monotonic() - t0)
    why = None
    for fmt, path in zip(formats, result.get("paths", [])):
        if fmt == "dng" and why is None:
            why = validator.check(path, result)
        try:
            os.unlink(path)
        except OSError as exc:
            why = why or f"capture file {path} could not be deleted: {exc}"
    if why is None:
        tally.count("captures_ok")
    else:
        tally.invalid_capture(why)
    return result


class ClientThread(threading.Thread):
    def __init__(self, index: int, address: str, seed: int, tally: Tally,
                 validator: Validator, stop: threading.Event):
        super().__init__(name=f"stress-client-{index}", daemon=True)
        self.index, self.address, self.tally, self.validator = index, address, tally, validator
        self.script = ClientScript(seed, index)
        self.stop_event = stop
        self.steps = 0
        self.crashed: BaseException | None = None

    def run(self) -> None:
        try:
            with connect(self.address) as client:
                modules: dict[str, Module] = {}
                while not self.stop_event.is_set():
                    self._step(client, modules, self.script.next())
        except BaseException as exc:  # noqa: BLE001 - reported, never silent
            self.crashed = exc

    def _step(self, client, modules: dict, step: dict) -> None:
        self.steps += 1
        if step["action"] == "pause":
            self.stop_event.wait(step["seconds"])
            return
        try:
            paths = client._manager.GetModules(timeout=5)
        except Exception as exc:  # noqa: BLE001
            self.tally.error("GetModules", exc)
            self.stop_event.wait(0.05)
            return
        if not paths:
            self.stop_event.wait(0.01)
            return
        path = sorted(paths)[int(step["pick"] * len(paths))]
        module = modules.setdefault(path, Module(client, path))
        self._act(module, step)

    def _act(self, module: Module, step: dict) -> None:
        action, tally = step["action"], self.tally
        if action.startswith("capture"):
            formats = ("dng",) if action == "capture_dng" else ("jpeg", "dng")
            capture_and_check(module, tally, self.validator, formats, step["readout_mode"])
            return
        method, call = {
            "claim": ("Claim", module.claim),
            "release": ("Release", module.release),
            "lens": ("SetControls", lambda: module.set_controls(AfMode="manual",
                                                                LensPosition=step["position"])),
            "autofocus": ("AutoFocus", module.autofocus),
        }[action]
        t0 = time.monotonic()
        tally.begin(method)
        try:
            call()
            tally.count(f"{method}_ok")
            if method == "Claim":
                tally.sample("ready", time.monotonic() - t0)
        except ModcamClientError as exc:
            tally.error(method, exc)
        except Exception as exc:  # noqa: BLE001 - a client-side surprise is undocumented too
            tally.error(method, exc)
        finally:
            tally.end(method)
        if time.monotonic() - t0 > HANG_SECONDS:
            tally.count("slow_calls")
