"""modcamd latency benchmark: hot-plug signals, claim, capture and the idle daemon.

Runs the real parts (tests/support/daemon.py): a private dbus-daemon, modcamd
as its own process (log level info, its production default), one virtual
module process at the real 11552 x 8672 geometry showing its synthetic test
pattern (`--source synthetic`: the physical scene model spends seconds
rendering each new setting, a cost of the virtual module, not of the daemon),
and real umockdev uevents. Measures in one run:
  - uevent -> ModuleAdded and unplug -> ModuleRemoved, p50/p99 over N
    plug/unplug cycles: from just before the call that sends the uevent
    (VirtualUdevBed.unplug sends "remove" first, then removes the device) to
    receipt of the D-Bus signal here, time-stamped on a thread of its own. The
    peer is a plain pyudev listener process (tests/support/udev_monitor_child.py)
    timed from the same instants, so the daemon's own share is visible;
  - Claim() on an off module until its reply, minus the module's boot time;
  - Capture() from ready: 25 MP binned JPEG and 100 MP JPEG, medians after one
    warm-up shot per mode, with the daemon's stage timings (files deleted);
  - the idle daemon's CPU time and wake-ups with the module plugged and off,
    and its RSS then (after the captures: does the memory come back?).
Needs the umockdev preload: `umockdev-wrapper .venv/bin/python bench/latency.py`.
Prints a table, then one JSON line.  --quick: 40 cycles, 10 s idle (< 1 minute).
"""
import argparse
import json
import math
import os
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "daemon"), str(REPO)]
from modcam.virtual.udev_device import preload_active  # noqa: E402

SERIAL = "LAT0001"
SENSOR = (11552, 8672)
BOOT_S = 1.0            # the module's configured boot (the default is 2.0)
IDLE_TIMEOUT_S = 1.0    # power-down between claim runs; the config's minimum
TARGETS = {"hotplug_p99_ms": 20.0, "claim_over_boot_ms": 50.0, "capture25_ms": 500.0,
           "idle_cpu_s_per_min": 0.05}


def pct(values, q):
    """Linear-interpolated percentile, q in [0, 1]."""
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


class SignalClock:
    """modcamd's signals, time-stamped at receipt on a GLib context and thread
    of their own: the main thread may be inside a uevent send or a blocking
    call when a signal arrives, and must not delay its time stamp."""

    def __init__(self, conn):
        from gi.repository import GLib
        self.conn, self.signals = conn, []      # (monotonic time, path, member, args)
        self._cond, ready = threading.Condition(), threading.Event()
        self._ctx = GLib.MainContext.new()
        self._loop = GLib.MainLoop.new(self._ctx, False)
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(5)

    def _run(self, ready):
        from gi.repository import Gio
        self._ctx.push_thread_default()        # the subscription's callbacks run here
        self._sub = self.conn.signal_subscribe(None, None, None, None, None,
                                               Gio.DBusSignalFlags.NONE, self._on_signal)
        ready.set()
        self._loop.run()
        self._ctx.pop_thread_default()

    def _on_signal(self, _conn, _sender, path, iface, member, params):
        t = time.monotonic()
        if iface != "org.freedesktop.DBus":
            with self._cond:
                self.signals.append((t, path, member, params.unpack()))
                self._cond.notify_all()

    def mark(self):
        with self._cond:
            return len(self.signals)

    def wait(self, member, path=None, after=0, match=None, timeout=15.0):
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for sig in self.signals[after:]:
                    if sig[2] == member and path in (None, sig[1]) and (match is None
                                                                         or match(sig[3])):
                        return sig
                if not self._cond.wait(deadline - time.monotonic()) and \
                        time.monotonic() > deadline:
                    raise SystemExit(f"no {member} signal on {path} within {timeout:g} s")

    def wait_state(self, path, state, after, timeout=15.0):
        return self.wait("PropertiesChanged", path, after,
                         lambda a: a[1].get("State") == state, timeout)

    def close(self):
        self.conn.signal_unsubscribe(self._sub)
        self._loop.quit()
        self._thread.join(5)


def call(conn, path, method, options=None, timeout=120.0):
    """A blocking call on the module interface (the GIL is released meanwhile)."""
    from gi.repository import Gio, GLib
    from modcam import names
    params = GLib.Variant("(a{sv})", (options,)) if options is not None else None
    reply = conn.call_sync(names.BUS_NAME, path, names.MODULE_INTERFACE, method, params, None,
                           Gio.DBusCallFlags.NONE, int(timeout * 1000), None)
    value = reply.unpack()
    return value[0] if len(value) == 1 else None


def hotplug(vm, monitor, clock, cycles):
    r = {k: [] for k in ("added", "removed", "peer_add", "peer_remove", "attached", "send")}
    for _ in range(cycles):
        mark = clock.mark()
        t0 = time.monotonic()
        sys_path = vm.plug()
        r["send"].append(time.monotonic() - t0)
        r["added"].append(clock.wait("ModuleAdded", after=mark,
                                     match=lambda a: a[0] == vm.path)[0] - t0)
        r["peer_add"].append(monitor.wait_event("add", sys_path=sys_path)["t"] - t0)
        # Unplug once the daemon has learnt the module (hello, identify, EEPROM,
        # status), as a person would: removal is then timed in steady state.
        r["attached"].append(clock.wait("PropertiesChanged", vm.path, mark,
                                        lambda a: "Sensor" in a[1])[0] - t0)
        mark = clock.mark()
        t0 = time.monotonic()
        vm.unplug()
        r["removed"].append(clock.wait("ModuleRemoved", after=mark,
                                       match=lambda a: a[0] == vm.path)[0] - t0)
        r["peer_remove"].append(monitor.wait_event("remove", sys_path=sys_path)["t"] - t0)
    return r


def claims(conn, path, clock, runs):
    """Claim an off module; Release and wait for the idle power-down between runs."""
    over, power_on, ready_sig, after_ready = [], [], [], []
    for _ in range(runs):
        mark = clock.mark()
        t0 = time.monotonic()
        call(conn, path, "Claim")
        t1 = time.monotonic()
        booting = clock.wait_state(path, "booting", mark)[0]
        ready = clock.wait_state(path, "ready", mark)[0]
        over.append(t1 - t0 - BOOT_S)
        power_on.append(booting - t0)                    # Claim -> module says booting
        ready_sig.append(ready - booting - BOOT_S)       # booting -> ready, over the boot
        after_ready.append(t1 - ready)                   # controls + ring attach -> reply
        mark = clock.mark()
        call(conn, path, "Release")
        clock.wait_state(path, "off", mark, IDLE_TIMEOUT_S + 15)
    return {"over": over, "power_on": power_on, "ready_signal_over_boot": ready_sig,
            "ready_to_reply": after_ready}


def captures(conn, path, runs, pid):
    """Capture() with the module claimed and ready; one warm-up shot per mode
    (the virtual module renders its pattern once per setting)."""
    from gi.repository import GLib
    out = {"rss": []}
    for mode in ("binned", "full"):
        shots = []
        for _ in range(runs + 1):
            t0 = time.monotonic()
            res = call(conn, path, "Capture", {"readout_mode": GLib.Variant("s", mode)})
            shots.append((time.monotonic() - t0, res["timings"], res["width"], res["height"],
                          sum(res["sizes"])))
            for p in res["paths"]:
                os.unlink(p)       # 10-30 MB JPEGs
            out["rss"].append(memory(pid))
        out[mode] = shots
    return out


def proc_status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def memory(pid):
    """kB: resident in all, private (anon), and shared memory (the mapped frame ring)."""
    return {k: proc_status(pid, k) for k in ("VmRSS", "RssAnon", "RssShmem", "VmHWM")}


def ring_reference(runs):
    """The frame ring the claim sets up, timed alone in this process: the
    module side creating a 4-slot region for 100 MP frames, and the daemon
    side attaching it (what modcamd does between "ready" and the reply)."""
    from modcam import raw12
    from modcam.link.ring import Consumer, Producer
    payload = raw12.packed_stride(SENSOR[0]) * SENSOR[1]
    create, attach = [], []
    for _ in range(runs):
        t0 = time.monotonic()
        producer = Producer.create(4, payload)
        t1 = time.monotonic()
        doorbell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        consumer = Consumer(os.dup(producer.region_fd), doorbell_fd=doorbell)
        create.append(t1 - t0)
        attach.append(time.monotonic() - t1)
        consumer.close()
        producer.close()
        os.close(doorbell)
    return {"create": create, "attach": attach}


def cpu_sample(pid):
    """(utime+stime seconds from /proc/PID/stat, on-CPU ns summed over threads
    from schedstat, context switches summed over threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])      # utime, stime (fields 14, 15)
    ns = switches = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns += int(f.read().split()[0])
            switches += sum(proc_status(f"{pid}/task/{tid}", k)
                            for k in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"))
        except (FileNotFoundError, ProcessLookupError):
            pass                                     # a thread that just ended
    return ticks / os.sysconf("SC_CLK_TCK"), ns / 1e9, switches


def idle(pid, clock, seconds):
    time.sleep(1.0)            # let the power-down's last replies and signals settle
    mark, a, t0 = clock.mark(), cpu_sample(pid), time.monotonic()
    time.sleep(seconds)
    b, elapsed = cpu_sample(pid), time.monotonic() - t0
    return {"cpu_s": b[0] - a[0], "cpu_sched_s": b[1] - a[1], "switches": b[2] - a[2],
            "seconds": elapsed, "signals": [s[2] for s in clock.signals[mark:]]}


def run(args):
    from tests.support.daemon import DaemonHarness
    from tests.support.testbed import UdevTestbed
    cycles, n_claims, n_shots = (40, 3, 2) if args.quick else (args.cycles, 5, 5)
    r = {"load_1m": round(os.getloadavg()[0], 2)}
    bed = UdevTestbed()
    h = DaemonHarness(bed)
    clock = None
    try:
        h.start(idle_timeout=IDLE_TIMEOUT_S, extra_args=("--log-level", "info"))
        pid, conn = h.daemon.proc.pid, h.client.conn
        clock = SignalClock(conn)
        r["mem_start"] = memory(pid)
        vm = h.add_module(SERIAL, sensor=SENSOR, boot_seconds=BOOT_S,
                          extra_args=("--source", "synthetic"))
        monitor = bed.start_monitor()
        r["hotplug"] = hotplug(vm, monitor, clock, cycles)
        r["mem_hotplug"] = memory(pid)
        mark = clock.mark()
        vm.plug()
        clock.wait("PropertiesChanged", vm.path, mark, lambda a: "Sensor" in a[1])
        r["claim"] = claims(conn, vm.path, clock, n_claims)
        call(conn, vm.path, "Claim")
        r["mem_claimed"] = memory(pid)
        r["capture"] = captures(conn, vm.path, n_shots, pid)
        mark = clock.mark()
        call(conn, vm.path, "Release")
        clock.wait_state(vm.path, "off", mark, IDLE_TIMEOUT_S + 15)
        r["idle"] = idle(pid, clock, args.idle_seconds or (10.0 if args.quick else 60.0))
        r["mem_idle"] = memory(pid)
        r["ring"] = ring_reference(2 if args.quick else 3)
        if h.daemon.proc.poll() is not None or "Traceback" in h.log():
            print("---- modcamd log (it failed) ----\n" + h.log()[-6000:], file=sys.stderr)
    except BaseException:
        print("---- modcamd log ----\n" + h.log()[-6000:], file=sys.stderr)
        raise
    finally:
        if clock is not None:
            clock.close()
        h.close()
        bed.close()
    return r


def summarise(r, quick):
    hp, ms = r["hotplug"], lambda v: round(v * 1000, 2)
    out = {"quick": quick, "cycles": len(hp["added"])}
    for key, name in (("added", "added"), ("removed", "removed"), ("peer_add", "peer_add"),
                      ("peer_remove", "peer_remove"), ("attached", "attached"),
                      ("send", "uevent_send")):
        out[f"{name}_p50_ms"], out[f"{name}_p99_ms"] = ms(pct(hp[key], .5)), ms(pct(hp[key], .99))
    out["added_overhead_p50_ms"] = round(out["added_p50_ms"] - out["peer_add_p50_ms"], 2)
    out["removed_overhead_p50_ms"] = round(out["removed_p50_ms"] - out["peer_remove_p50_ms"], 2)
    out["added_overhead_p99_ms"] = round(out["added_p99_ms"] - out["peer_add_p99_ms"], 2)
    out["removed_overhead_p99_ms"] = round(out["removed_p99_ms"] - out["peer_remove_p99_ms"], 2)
    cl = r["claim"]
    out["claim_runs"], out["boot_s"] = len(cl["over"]), BOOT_S
    out["claim_over_boot_ms"] = ms(statistics.median(cl["over"]))
    out["claim_over_boot_max_ms"] = ms(max(cl["over"]))
    out["claim_stages_ms"] = {k: ms(statistics.median(v)) for k, v in cl.items() if k != "over"}
    out["ring_create_ms"] = ms(statistics.median(r["ring"]["create"]))   # module side
    out["ring_attach_ms"] = ms(statistics.median(r["ring"]["attach"]))   # daemon side
    for mode, key in (("binned", "capture25"), ("full", "capture100")):
        first, *rest = r["capture"][mode]
        out[f"{key}_ms"] = ms(statistics.median(s[0] for s in rest))
        out[f"{key}_first_ms"] = ms(first[0])
        out[f"{key}_runs"] = len(rest)
        out[f"{key}_size"] = f"{rest[0][2]}x{rest[0][3]}"
        out[f"{key}_mb"] = round(statistics.median(s[4] for s in rest) / 1e6, 1)
        stages = sorted({k for s in rest for k in s[1]})
        out[f"{key}_stages_ms"] = {k: ms(statistics.median(s[1].get(k, 0.0) for s in rest))
                                   for k in stages}
    idl = r["idle"]
    out["idle_seconds"] = round(idl["seconds"], 1)
    out["idle_cpu_s"] = round(idl["cpu_s"], 3)
    out["idle_cpu_sched_s"] = round(idl["cpu_sched_s"], 4)
    out["idle_cpu_s_per_min"] = round(idl["cpu_sched_s"] * 60 / idl["seconds"], 4)
    out["idle_wakeups_per_s"] = round(idl["switches"] / idl["seconds"], 2)
    out["idle_signals"] = len(idl["signals"])
    mb = lambda kb: round(kb / 1024, 1)   # noqa: E731
    out["idle_rss_mb"] = mb(r["mem_idle"]["VmRSS"])
    out["idle_rss_anon_mb"] = mb(r["mem_idle"]["RssAnon"])
    out["idle_rss_shmem_mb"] = mb(r["mem_idle"]["RssShmem"])
    for k in ("start", "hotplug", "claimed"):
        out[f"rss_{k}_mb"] = mb(r[f"mem_{k}"]["VmRSS"])
        out[f"rss_anon_{k}_mb"] = mb(r[f"mem_{k}"]["RssAnon"])
    out["rss_shmem_claimed_mb"] = mb(r["mem_claimed"]["RssShmem"])
    out["rss_anon_after_captures_max_mb"] = mb(max(m["RssAnon"] for m in r["capture"]["rss"]))
    out["rss_shmem_after_captures_max_mb"] = mb(max(m["RssShmem"] for m in r["capture"]["rss"]))
    out["rss_peak_mb"] = mb(r["mem_idle"]["VmHWM"])
    out["module"] = f"{SENSOR[0]}x{SENSOR[1]} synthetic source, boot {BOOT_S:g} s"
    out["cpus"] = os.cpu_count()
    out["load_1m"] = r["load_1m"]      # other work on the machine skews the captures
    return out


def verdict(ok):
    return "pass" if ok else "FAIL"


def print_table(o):
    t = TARGETS
    rows = [
        ("uevent -> ModuleAdded", f"{o['added_p50_ms']:.2f} / {o['added_p99_ms']:.2f} ms",
         f"p99 <= {t['hotplug_p99_ms']:g} ms", verdict(o["added_p99_ms"] <= t["hotplug_p99_ms"])),
        ("  peer: pyudev listener 'add'", f"{o['peer_add_p50_ms']:.2f} / "
         f"{o['peer_add_p99_ms']:.2f} ms", "", ""),
        ("unplug -> ModuleRemoved", f"{o['removed_p50_ms']:.2f} / {o['removed_p99_ms']:.2f} ms",
         f"p99 <= {t['hotplug_p99_ms']:g} ms",
         verdict(o["removed_p99_ms"] <= t["hotplug_p99_ms"])),
        ("  peer: pyudev listener 'remove'", f"{o['peer_remove_p50_ms']:.2f} / "
         f"{o['peer_remove_p99_ms']:.2f} ms", "", ""),
        ("  (plug -> attached, p50/p99)", f"{o['attached_p50_ms']:.1f} / "
         f"{o['attached_p99_ms']:.1f} ms", "", ""),
        (f"Claim (off) -> ready, over {o['boot_s']:g} s boot", f"{o['claim_over_boot_ms']:.1f} ms",
         f"<= {t['claim_over_boot_ms']:g} ms",
         verdict(o["claim_over_boot_ms"] <= t["claim_over_boot_ms"])),
        (f"Capture 25 MP binned JPEG ({o['capture25_size']})", f"{o['capture25_ms']:.0f} ms",
         f"<= {t['capture25_ms']:g} ms", verdict(o["capture25_ms"] <= t["capture25_ms"])),
        (f"Capture 100 MP JPEG ({o['capture100_size']})", f"{o['capture100_ms']:.0f} ms", "", ""),
        (f"idle CPU over {o['idle_seconds']:g} s", f"{o['idle_cpu_s']:.2f} s "
         f"({o['idle_cpu_s_per_min']:.4f} s/min)", f"<= {t['idle_cpu_s_per_min']:g} s/min",
         verdict(o["idle_cpu_s_per_min"] <= t["idle_cpu_s_per_min"])),
        ("idle RSS after captures", f"{o['idle_rss_mb']:.0f} MB", "", ""),
    ]
    print(f"{'figure':<44} {'value (p50 / p99)':>26} {'target':>18} {'':>5}")
    for name, value, target, ok in rows:
        print(f"{name:<44} {value:>26} {target:>18} {ok:>5}")
    print(f"{o['cycles']} plug/unplug cycles; claim median of {o['claim_runs']}; captures median "
          f"of {o['capture25_runs']} after a warm-up shot (first: {o['capture25_first_ms']:.0f} / "
          f"{o['capture100_first_ms']:.0f} ms); module {o['module']}")
    print("the module shows its synthetic test pattern (small JPEGs: bench/isp.py develops "
          "realistic content) and delivers a still without exposure or link transfer time")
    print(f"claim stages (ms): {o['claim_stages_ms']}; the ring alone: module creates it in "
          f"{o['ring_create_ms']:.0f} ms, daemon attaches it in {o['ring_attach_ms']:.0f} ms")
    for key in ("capture25", "capture100"):
        print(f"{key} stages (ms): {o[key + '_stages_ms']}")
    print(f"idle: {o['idle_wakeups_per_s']} context switches/s, {o['idle_signals']} signals; "
          f"CPU/min from schedstat (stat ticks are 10 ms)")
    print(f"RSS (private): start {o['rss_start_mb']:.0f} ({o['rss_anon_start_mb']:.0f}) MB, "
          f"after hot-plug {o['rss_hotplug_mb']:.0f} ({o['rss_anon_hotplug_mb']:.0f}), claimed "
          f"{o['rss_claimed_mb']:.0f} ({o['rss_anon_claimed_mb']:.0f}, ring "
          f"{o['rss_shmem_claimed_mb']:.0f}), after captures ring up to "
          f"{o['rss_shmem_after_captures_max_mb']:.0f}, private up to "
          f"{o['rss_anon_after_captures_max_mb']:.0f}; idle {o['idle_rss_mb']:.0f} "
          f"({o['idle_rss_anon_mb']:.0f}); peak {o['rss_peak_mb']:.0f} MB")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="40 cycles, 10 s idle, under a minute")
    ap.add_argument("--cycles", type=int, default=200, help="plug/unplug cycles (default 200)")
    ap.add_argument("--idle-seconds", type=float, default=None,
                    help="idle measurement window (default 60, --quick 10)")
    args = ap.parse_args()
    if not preload_active():
        print("bench/latency.py drives a umockdev testbed, and umockdev only delivers "
                 "uevents sent from a process under its preload; run it as\n"
                 "  umockdev-wrapper .venv/bin/python bench/latency.py [--quick]", file=sys.stderr)
        sys.exit(2)
    # A stale UMOCKDEV_DIR would redirect this process's /sys (tests/conftest.py).
    os.environ.pop("UMOCKDEV_DIR", None)
    sys.setswitchinterval(0.0005)    # reader threads must not hold the GIL for 5 ms
    t0 = time.monotonic()
    out = summarise(run(args), args.quick)
    out["wall_s"] = round(time.monotonic() - t0, 1)
    print_table(out)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
