"""Session-wide test set-up: import paths and the umockdev preload.

Hot-plug tests drive a umockdev testbed *from the pytest process*, and
umockdev 0.17 only delivers uevents when the sending process runs under its
preload library (the sender resolves the device through the testbed's /sys,
which only the preload shows).  Without it events silently go nowhere, so the
suite must be started as

    umockdev-wrapper .venv/bin/python -m pytest [ARGS...]

(umockdev-wrapper is `env LD_PRELOAD=libumockdev-preload.so.0:$LD_PRELOAD`).
With no testbed alive the preload passes everything through, so other tests
are unaffected; tests/integration/test_udev_hotplug.py checks that numpy,
subprocesses, sockets and shared memory still behave with a testbed alive.

We do not re-exec pytest under the preload from here: by the time a conftest
runs, pytest has already redirected fds 1/2 for output capture and parsed
its plugins, and a silent re-exec hides from the user how the suite really
runs.  Instead, tests that need the preload carry the `umockdev` marker
(added automatically to any test using the `udev_bed` fixture), and if such
tests are selected without the preload the session stops with this
explanation.  Deselect them with `-m "not umockdev"` to run the rest plainly.
"""

import os
import sys
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]
# Import this checkout's modcam (daemon/) and tests.support even when the
# package is not installed into the venv, or installed from another tree.
for _path in (str(_REPO), str(_REPO / "daemon")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

# A stale UMOCKDEV_DIR inherited from the environment (e.g. a shell that once
# ran umockdev-run) would redirect this process's /sys into a directory that
# no longer exists as soon as the preload is active.  Testbeds set their own.
os.environ.pop("UMOCKDEV_DIR", None)

PRELOAD_COMMAND = "umockdev-wrapper .venv/bin/python -m pytest"


def preload_active() -> bool:
    # Same test as modcam.virtual.udev_device.preload_active(), kept here
    # without imports so that a broken GObject set-up cannot stop the
    # collection of tests that do not need it.
    try:
        with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
            return "libumockdev-preload" in maps.read()
    except OSError:
        return False


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "umockdev: needs the umockdev preload in the pytest process "
                   f"(run as `{PRELOAD_COMMAND}`)")


def pytest_report_header(config):
    state = "active" if preload_active() else "NOT active"
    return f"umockdev preload: {state} (LD_PRELOAD={os.environ.get('LD_PRELOAD', '')!r})"


def pytest_itemcollected(item):
    # Mark at collection time, so that `-m "not umockdev"` can deselect them.
    if "udev_bed" in getattr(item, "fixturenames", ()):
        item.add_marker(pytest.mark.umockdev)


@pytest.hookimpl(trylast=True)   # after `-m`/`-k` deselection has happened
def pytest_collection_modifyitems(session, config, items):
    needing = [item for item in items if item.get_closest_marker("umockdev") is not None]
    if needing and not preload_active():
        raise pytest.UsageError(
            f"{len(needing)} selected test(s) (e.g. {needing[0].nodeid}) drive a umockdev "
            "testbed, and umockdev only delivers uevents from a process running under its "
            "preload library, which this pytest process does not.\n"
            f"Run the suite as:  {PRELOAD_COMMAND} [ARGS...]\n"
            "or deselect those tests with:  -m \"not umockdev\"")


@pytest.fixture
def udev_bed():
    """A fresh umockdev testbed for one test (modules, monitor children); closed after."""
    from tests.support.testbed import UdevTestbed
    with UdevTestbed() as bed:
        yield bed


@pytest.fixture
def daemon_harness(udev_bed, request):
    """A private bus and a testbed; `.start()` runs modcamd on them (tests/support/daemon.py)."""
    from tests.support.daemon import DaemonHarness
    harness = DaemonHarness(udev_bed)
    yield harness
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed and harness.daemon is not None:
        print("---- modcamd log ----\n" + harness.daemon.log[-20000:])
    harness.close()


@pytest.fixture
def modcamd(daemon_harness):
    """modcamd running on a private bus, with an empty umockdev testbed."""
    return daemon_harness.start()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # Keeps each phase's report on the item, so fixtures can tell a failed test.
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture(scope="module")
def checkout_reachable_by_others():
    """Tests that run this checkout's code as other users (setpriv) need every
    directory above it to be searchable by them; a checkout under a private
    directory (mktemp -d is 0700) is not. Adds o+x where it is missing, for the
    module's tests only, and puts the modes back."""
    import stat
    changed = []
    for d in [_REPO, *_REPO.parents]:
        mode = d.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(d, mode | stat.S_IXOTH)
            changed.append((d, mode))
    yield
    for d, mode in changed:
        os.chmod(d, stat.S_IMODE(mode))
