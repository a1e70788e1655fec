"""Fixtures for tests that run modcamd as a process on a private bus."""
import pytest

from tests.support.daemon import DaemonHarness


@pytest.fixture
def daemon_harness(udev_bed, request):
    harness = DaemonHarness(udev_bed)
    yield harness
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed and harness.daemon is not None:
        print("---- modcamd log ----\n" + harness.daemon.log[-20000:])
    harness.close()


@pytest.fixture
def modcamd(daemon_harness):
    """modcamd running on a private bus, with an empty umockdev testbed."""
    return daemon_harness.start()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
