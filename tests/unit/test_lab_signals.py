"""The lab's signal log keeps a long run's memory bounded without losing the
place of a waiter: a mark taken before the log forgets its older half still
finds the signal that follows it (a 10 000-cycle stress run reported two
ModuleAdded signals as missed when marks were plain list indices)."""
import threading

from modcam.lab import SignalWatch


def log() -> SignalWatch:
    w = SignalWatch.__new__(SignalWatch)       # the log alone, without a bus
    w._cond, w.signals, w._forgotten = threading.Condition(), [], 0
    return w


def test_a_mark_survives_the_log_forgetting_its_older_half():
    w = log()
    for cycle in range(30000):
        path = f"/m/{cycle}"
        mark = w.mark()
        w._record(float(cycle), "ModuleAdded", path, keep=1000)
        assert w.wait("ModuleAdded", path, mark, timeout=0) == float(cycle)
        assert w.wait("ModuleRemoved", path, mark, timeout=0) is None
        w._record(cycle + 0.5, "ModuleRemoved", path, keep=1000)
    assert len(w.signals) <= 1000
    assert w.mark() == 60000


def test_a_mark_older_than_what_is_kept_still_sees_what_is_kept():
    w = log()
    mark = w.mark()
    for i in range(3000):
        w._record(float(i), "ModuleAdded", f"/m/{i}", keep=1000)
    assert w.wait("ModuleAdded", "/m/2999", mark, timeout=0) == 2999.0
