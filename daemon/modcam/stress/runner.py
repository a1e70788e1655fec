"""The cycles of a stress run and the checks after each.

A cycle: plug one module (uevent -> ModuleAdded timed), drive it toward the
cycle's target state (a Claim, a Capture or an AutoFocus of the driver's
own, on worker threads), wait the seeded delay, read State, unplug
(-> ModuleRemoved timed), power the module down as an unplug does, collect
the driver's calls, then check: modcamd still running (else a crash),
GetModules answers within 2 s (else a hang) without the module (else the
state is inconsistent), and sample its fds, threads and RSS.
"""
from __future__ import annotations

import collections
import concurrent.futures
import threading
import time

from gi.repository import GLib

from modcam.client import ModcamClientError, Module, connect
from modcam.lab import Lab
from modcam.stress.clients import ClientThread, Tally, capture_and_check
from modcam.stress.plan import cycle_plan, serials
from modcam.stress.validate import Validator

SIGNAL_TIMEOUT = 5.0
CALL_WAIT = 15.0           # the driver's calls must be answered this soon after an unplug


class Run:
    def __init__(self, lab: Lab, *, seed: int, cycles: int, clients: int, modules: int = 1,
                 boot_seconds: float = 0.3, sensor=(256, 192), progress=None, on_sample=None):
        self.lab, self.seed, self.cycles, self.nclients = lab, seed, cycles, clients
        self.boot_seconds, self.sensor, self.progress = boot_seconds, sensor, progress
        self.on_sample = on_sample      # called with each cycle's sample as it is taken
        self.plan = cycle_plan(seed, cycles, modules, boot_seconds)
        self.serials = serials(modules)
        self.tally, self.validator = Tally(), Validator()
        self.states_at_unplug: collections.Counter = collections.Counter()
        self.in_flight_at_unplug: collections.Counter = collections.Counter()
        self.samples: list[dict] = []          # per cycle: fds, threads, memory
        self.events: collections.Counter = collections.Counter()   # crashes, hangs...
        self.failures: list[str] = []
        self.done_cycles = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="stress-driver")

    # -- the run -------------------------------------------------------------

    def run(self) -> dict:
        for serial in self.serials:
            self.lab.add_module(serial, sensor=self.sensor, boot_seconds=self.boot_seconds)
        stop = threading.Event()
        workers = [ClientThread(k, self.lab.address, self.seed, self.tally, self.validator, stop)
                   for k in range(self.nclients)]
        t0 = time.monotonic()
        with connect(self.lab.address) as driver:
            for w in workers:
                w.start()
            try:
                for step in self.plan:
                    if not self._cycle(driver, step):
                        break
                    self.done_cycles += 1
                    if self.progress:
                        self.progress(self.done_cycles, self.cycles)
            except KeyboardInterrupt:       # SIGINT, or SIGTERM/SIGHUP (cli.py): report what ran
                self.failures.append(f"interrupted after {self.done_cycles} cycles")
            stop.set()
            for w in workers:
                w.join(60)
                if w.is_alive():
                    self.events["hangs"] += 1
                    self.failures.append(f"client {w.index} did not stop within 60 s")
                elif w.crashed is not None:
                    self.failures.append(f"client {w.index} raised {w.crashed!r}")
                    self.events["client_crashes"] += 1
        self._pool.shutdown(wait=False, cancel_futures=True)
        elapsed = time.monotonic() - t0
        final = self._settle()
        return {"elapsed_s": elapsed, "final": final,
                "client_steps": sum(w.steps for w in workers)}

    def _cycle(self, driver, step: dict) -> bool:
        lab, serial = self.lab, step["serial"]
        path = lab.modules[serial].path
        mark = lab.watch.mark()
        t_plug = lab.plug(serial)
        t_added = lab.watch.wait("ModuleAdded", path, mark, SIGNAL_TIMEOUT)
        if t_added is None:
            self.events["missed_signals"] += 1
            self.failures.append(f"cycle {step['cycle']}: no ModuleAdded within 5 s")
        else:
            self.tally.sample("add", t_added - t_plug)
        futures = self._drive(driver, path, step)
        state = lab.watch.state(path) or "unknown"
        # Anyone's call counts: the driver's, or a client's.
        for method in ("AutoFocus", "Capture"):
            if self._pending(method, futures) or self.tally.busy_with(method):
                self.in_flight_at_unplug[method] += 1
        self.states_at_unplug[state] += 1
        mark = lab.watch.mark()
        t_unplug = lab.unplug(serial)
        t_removed = lab.watch.wait("ModuleRemoved", path, mark, SIGNAL_TIMEOUT)
        if t_removed is None:
            self.events["missed_signals"] += 1
            self.failures.append(f"cycle {step['cycle']}: no ModuleRemoved within 5 s")
        else:
            self.tally.sample("remove", t_removed - t_unplug)
        if not lab.power_cut(serial):
            self.failures.append(f"cycle {step['cycle']}: could not power {serial} down")
        self._collect(futures, step)
        time.sleep(step["settle"])
        return self._check(step, path)

    # -- driving toward a state ----------------------------------------------

    def _drive(self, driver, path: str, step: dict) -> dict:
        target, module = step["target"], Module(driver, path)
        futures: dict[str, concurrent.futures.Future] = {}
        if target == "off":
            time.sleep(step["delay"])
            return futures
        futures["Claim"] = self._pool.submit(self._timed_claim, module)
        if target == "booting":
            time.sleep(step["delay"])
            return futures
        self._wait_future(futures["Claim"], 10.0)
        if target == "ready":
            # The clients keep it busy too: wait for a moment it is only ready.
            self._wait_state(path, "ready", None)
            time.sleep(step["delay"])
        elif target == "capturing":
            futures["Capture"] = self._pool.submit(
                capture_and_check, module, self.tally, self.validator, ("dng",))
            self._wait_state(path, "capturing", futures["Capture"])
            time.sleep(step["delay"])
        else:       # streaming, autofocus: an AutoFocus streams binned frames
            futures["AutoFocus"] = self._autofocus(module)
            if target == "streaming":
                self._wait_state(path, "streaming", futures["AutoFocus"])
            time.sleep(step["delay"])
        return futures

    def _autofocus(self, module: Module, patience: float = 1.0):
        """An AutoFocus of the driver's, sent again while it is refused as Busy
        (a client's capture holds the module) for up to `patience` s."""
        deadline = time.monotonic() + patience
        while True:
            future = self._pool.submit(module.autofocus)
            try:
                future.result(0.01)
            except concurrent.futures.TimeoutError:
                return future               # in flight
            except ModcamClientError as exc:
                if exc.name != "Busy" or time.monotonic() > deadline:
                    return future
                self.tally.error("AutoFocus", exc)
                time.sleep(0.005)
                continue
            except Exception:  # noqa: BLE001 - counted when collected
                return future
            return future

    def _timed_claim(self, module: Module) -> None:
        t0 = time.monotonic()
        module.claim()
        self.tally.sample("ready", time.monotonic() - t0)

    def _wait_state(self, path: str, state: str, future, timeout: float = 3.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (future is not None and future.done()):
            if self.lab.watch.state(path) == state:
                return True
            time.sleep(0.001)
        return False

    @staticmethod
    def _wait_future(future, timeout: float) -> None:
        try:
            future.result(timeout)
        except Exception:  # noqa: BLE001 - counted when collected
            pass

    @staticmethod
    def _pending(method: str, futures: dict) -> bool:
        return method in futures and not futures[method].done()

    def _collect(self, futures: dict, step: dict) -> None:
        for method, future in futures.items():
            try:
                future.result(CALL_WAIT)
                if method != "Capture":
                    self.tally.count(f"driver_{method}_ok")
            except concurrent.futures.TimeoutError:
                self.events["hangs"] += 1
                self.failures.append(f"cycle {step['cycle']} ({step['target']}): {method} "
                                     f"unanswered {CALL_WAIT:g} s after the unplug")
            except ModcamClientError as exc:
                self.tally.error(method, exc)
            except Exception as exc:  # noqa: BLE001
                self.tally.error(method, exc)

    # -- after every cycle ---------------------------------------------------

    def _check(self, step: dict, path: str) -> bool:
        lab = self.lab
        if not lab.daemon.alive():
            self.events["crashes"] += 1
            self.failures.append(f"cycle {step['cycle']}: modcamd exited with "
                                 f"{lab.daemon.proc.returncode}:\n{lab.daemon.log[-3000:]}")
            return False
        try:
            listed = lab.watch.get_modules(timeout=2.0)
        except GLib.Error as exc:
            self.events["hangs"] += 1
            self.failures.append(f"cycle {step['cycle']}: GetModules failed: {exc.message}")
            return lab.daemon.alive()
        if path in listed:
            self.events["inconsistent_states"] += 1
            self.failures.append(f"cycle {step['cycle']}: {path} still listed after its unplug")
        stats = lab.daemon_stats()
        if stats is not None:
            sample = {"cycle": step["cycle"], **stats}
            self.samples.append(sample)
            if self.on_sample:
                self.on_sample(sample)
        return True

    def _settle(self, seconds: float = 3.0) -> dict | None:
        """The daemon's figures once idle: the lowest over a few samples."""
        best = None
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            stats = self.lab.daemon_stats()
            if stats is None:
                return best
            if best is None or stats["fds"] < best["fds"]:
                best = stats
            time.sleep(0.2)
        return best
