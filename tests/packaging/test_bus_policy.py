"""dbus/org.modcam.Camera1.conf is enforced by a system-like bus, not only written.

One dbus-daemon with Debian's default system policy (deny own, deny method
calls unless a service file allows them) and our file included; modcamd runs
as its service user `modcam` on it, with a virtual module plugged through a
umockdev testbed. Callers are real processes under other credentials
(setpriv): `nobody` with no groups, a member of the `camera` group, root.
dbus-daemon (1.14) decides group rules by the caller's process credentials
(its gid and supplementary groups), as modcamd's own check does
(GetConnectionCredentials): a member who dropped its groups is outside, a
process that holds the camera gid is inside, whatever /etc/group lists.

What each test proves:
* the service user owns the name: modcamd, started as `modcam`, owns
  org.modcam.Camera1 (the daemon starting at all is the `own` rule for it);
* outside the camera group (nobody; a member without its groups) one may
  look but not operate: Introspect, Peer, property reads, GetModules and
  GetManagedObjects answer; Claim, Release, SetControls, AutoFocus, Capture,
  CaptureToFd, Properties.Set, and Capture sent to modcamd's unique name are
  refused by the bus itself (org.freedesktop.DBus.Error.AccessDenied and a
  "Rejected send message" line from dbus-daemon), so modcamd never sees them:
  no control changed, no file written;
* in the camera group (a member by /etc/group; nobody holding the camera gid)
  one may operate: Claim, SetControls, Capture (a file in modcamd's capture
  directory, owned by modcam), CaptureToFd (a JPEG in the caller's fd),
  Release; the bus and modcamd agree, or modcamd's PermissionDenied would
  show; Properties.Set stays refused (the group gets the Module interface);
* root may operate;
* only root and the service user may own the name: on the same kind of bus
  with no modcamd, RequestName is AccessDenied for nobody and for the camera
  member (by /etc/group or by a bare supplementary gid), granted to root and
  to modcam.

The accounts `modcam`, `camera` and a camera member are created when missing
and removed afterwards only if this module created them (needs root).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from gi.repository import Gio, GLib

from modcam import names
from tests.support.daemon import BusClient, ModcamdProcess, VirtualModuleProcess
from tests.support.system_bus import (MEMBER_USER, SERVICE_USER, Accounts, SystemLikeBus,
                                      as_user, as_user_without_groups, call, call_as)
from tests.support.testbed import UdevTestbed

pytestmark = [
    pytest.mark.umockdev,
    pytest.mark.skipif(os.geteuid() != 0, reason="creates users and switches to them: needs root"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("dbus-daemon", "setpriv", "useradd")),
                       reason="needs dbus-daemon, setpriv and useradd"),
]

DENIED = "org.freedesktop.DBus.Error.AccessDenied"
SERIAL = "MC0301"
MODULE_PATH = f"{names.MODULES_PATH}/{SERIAL}"
BUS = ("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus")


def on_module(method, args=None, interface=names.MODULE_INTERFACE, path=MODULE_PATH, **kw):
    return call(names.BUS_NAME, path, interface, method, args, **kw)


LOOKS = {
    "Introspect /": call(names.BUS_NAME, names.MANAGER_PATH,
                         "org.freedesktop.DBus.Introspectable", "Introspect"),
    "Introspect module": on_module("Introspect", interface="org.freedesktop.DBus.Introspectable"),
    "Peer.Ping": on_module("Ping", interface="org.freedesktop.DBus.Peer"),
    "Get State": on_module("Get", f"('{names.MODULE_INTERFACE}', 'State')",
                           interface="org.freedesktop.DBus.Properties"),
    "GetAll Module": on_module("GetAll", f"('{names.MODULE_INTERFACE}',)",
                               interface="org.freedesktop.DBus.Properties"),
    "GetAll Manager": call(names.BUS_NAME, names.MANAGER_PATH, "org.freedesktop.DBus.Properties",
                           "GetAll", f"('{names.MANAGER_INTERFACE}',)"),
    "GetModules": call(names.BUS_NAME, names.MANAGER_PATH, names.MANAGER_INTERFACE, "GetModules"),
    "GetManagedObjects": call(names.BUS_NAME, names.MANAGER_PATH,
                              "org.freedesktop.DBus.ObjectManager", "GetManagedObjects"),
}

REFUSED_EXPOSURE = 7777          # set by no test that is allowed to

OPERATES = {
    "Claim": on_module("Claim"),
    "SetControls": on_module("SetControls", f"({{'ExposureTime': <{REFUSED_EXPOSURE}>}},)"),
    "AutoFocus": on_module("AutoFocus"),
    "Capture": on_module("Capture", "(@a{sv} {},)"),
    "CaptureToFd": on_module("CaptureToFd", "(handle 0, {'format': <'jpeg'>})", fd=True),
    "Release": on_module("Release"),
    "Properties.Set": on_module("Set", f"('{names.MODULE_INTERFACE}', 'ExposureTime', "
                                       f"<{REFUSED_EXPOSURE}>)",
                                interface="org.freedesktop.DBus.Properties"),
}


class ServiceUserModcamd(ModcamdProcess):
    """modcamd as the service user, as the systemd unit runs it (User=modcam).

    ModcamdProcess builds its argv and starts it in __init__, with no room for
    a setpriv prefix: the few lines are repeated here with one.
    """

    def __init__(self, bed: UdevTestbed, bus_address: str, capture_dir: str, home: str):
        argv = [*as_user(SERVICE_USER), sys.executable, "-m", "modcam.service",
                "--bus", bus_address, "--capture-dir", capture_dir,
                "--idle-timeout", "30", "--boot-timeout", "10", "--log-level", "debug"]
        self.proc = subprocess.Popen(argv, env=bed.env({"HOME": home}), cwd=home,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()


class PolicyRig:
    """The system-like bus, modcamd as `modcam`, and one plugged virtual module."""

    def __init__(self, accounts: Accounts):
        self.tmp = tempfile.TemporaryDirectory(prefix="modcam-policy-")
        self.bus = self.client = self.bed = self.vm = self.daemon = None
        try:
            self._start(accounts.uid(SERVICE_USER), accounts.gid(SERVICE_USER))
        except BaseException:
            self.close()
            raise

    def _start(self, uid: int, gid: int) -> None:
        os.chmod(self.tmp.name, 0o755)
        bus_dir = os.path.join(self.tmp.name, "bus")
        os.mkdir(bus_dir)
        self.bus = SystemLikeBus(bus_dir)
        self.client = BusClient(self.bus.address)          # root: waits and reads
        self.home = os.path.join(self.tmp.name, "modcam")  # the service's state directory
        os.mkdir(self.home, 0o700)
        os.chown(self.home, uid, gid)
        self.capture_dir = os.path.join(self.home, "captures")
        self.bed = UdevTestbed()
        # modcamd binds its uevent socket in the testbed root (the preload's
        # stand-in for netlink) and reads the testbed's /sys.
        os.chown(self.bed.root_dir, uid, gid)
        self.vm = VirtualModuleProcess(self.bed, SERIAL)
        # As a udev rule would for the real device node: the service user's.
        os.chown(self.vm.control, uid, gid)
        self.daemon = ServiceUserModcamd(self.bed, self.bus.address, self.capture_dir, self.home)
        self._wait_owned()
        mark = len(self.client.signals)
        self.vm.plug()
        self.client.wait_signal("ModuleAdded", after=mark)
        self.client.eventually(lambda: self.client.prop(MODULE_PATH, "Model"), 10,
                               "the module's identity")

    def _wait_owned(self) -> None:
        def owned():
            if self.daemon.proc.poll() is not None:
                raise AssertionError(f"modcamd exited with {self.daemon.proc.returncode}:\n"
                                     f"{self.daemon.log}\n---- bus ----\n{self.bus.log}")
            return self.owner_uid()
        self.client.eventually(owned, 20, "modcamd to own its name")

    def _ask_bus(self, method: str, name: str):
        return self.client.conn.call_sync(*BUS, method, GLib.Variant("(s)", (name,)), None,
                                          Gio.DBusCallFlags.NONE, 1000, None).unpack()[0]

    def owner_name(self) -> str:
        return self._ask_bus("GetNameOwner", names.BUS_NAME)

    def owner_uid(self) -> int | None:
        try:
            return self._ask_bus("GetConnectionUnixUser", self.owner_name())
        except GLib.Error:
            return None

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
        if self.vm is not None:
            self.vm.unplug()
            self.vm.close()
        for part in (self.client, self.bus, self.bed):
            if part is not None:
                part.close()
        self.tmp.cleanup()


# Module scope, not session: the accounts are gone before other modules run
# (a package test must find the machine as the package found it).
@pytest.fixture(scope="module", autouse=True)
def _reachable(checkout_reachable_by_others):
    """modcamd and the callers run this checkout's code as other users."""


@pytest.fixture(scope="module")
def accounts():
    acc = Accounts().ensure()
    yield acc
    acc.close()


@pytest.fixture(scope="module")
def rig(accounts, request):
    failed_before = request.session.testsfailed
    rig = PolicyRig(accounts)
    yield rig
    rig.close()
    if request.session.testsfailed > failed_before:
        print("---- modcamd log ----\n" + rig.daemon.log[-20000:])
        print("---- dbus-daemon log ----\n" + rig.bus.log[-20000:])


def credentials(who: str, accounts: Accounts) -> list[str]:
    """The setpriv prefix for each kind of caller the tests use."""
    camera = accounts.gid("camera")
    return {
        "nobody": as_user_without_groups("nobody"),
        # Listed in /etc/group, but this process dropped its groups (a sandbox
        # may do that): the bus goes by the process's credentials, not the list.
        "camera member without its groups": as_user_without_groups(MEMBER_USER),
        "camera member": as_user(MEMBER_USER),
        # Not listed in /etc/group, but the process holds the gid (systemd's
        # SupplementaryGroups=camera, a setgid helper).
        "nobody with the camera gid": ["setpriv", "--reuid=65534", "--regid=65534",
                                       f"--groups={camera}"],
        "root": [],
        "modcam": as_user(SERVICE_USER),
    }[who]


def test_the_service_user_owns_the_name(rig, accounts):
    assert rig.owner_uid() == accounts.uid(SERVICE_USER)
    # dbus-daemon drops, with only this warning, a rule naming an unknown account.
    assert "Unknown username" not in rig.bus.log and "Unknown group" not in rig.bus.log


@pytest.mark.parametrize("who", ["nobody", "camera member without its groups"])
def test_outside_the_camera_group_one_may_look_but_not_operate(rig, accounts, who):
    before = sorted(os.listdir(rig.capture_dir))
    via_unique_name = {**OPERATES["Capture"], "dest": rig.owner_name()}
    calls = [*LOOKS.values(), *OPERATES.values(), via_unique_name]
    creds, results = call_as(credentials(who, accounts), rig.bus.address, calls)
    assert accounts.gid("camera") not in creds["groups"] + [creds["gid"]]
    looked = dict(zip(LOOKS, results[:len(LOOKS)]))
    operated = dict(zip([*OPERATES, "Capture via the unique name"], results[len(LOOKS):]))
    assert all("ok" in r for r in looked.values()), looked
    assert looked["Get State"]["ok"][0] in ("off", "booting", "ready")
    assert looked["GetModules"]["ok"] == [[MODULE_PATH]]
    assert names.MODULE_INTERFACE in looked["Introspect module"]["ok"][0]
    assert looked["GetAll Module"]["ok"][0]["Serial"] == SERIAL
    assert {k: r.get("error") for k, r in operated.items()} == dict.fromkeys(operated, DENIED)
    # The bus refused them (its log says so), so modcamd never saw them.
    rejected = [line for line in rig.bus.log.splitlines()
                if "Rejected send message" in line and f"uid={creds['uid']} " in line]
    for member in ("Claim", "Capture", "CaptureToFd", "SetControls", "AutoFocus", "Release"):
        assert any(f'member="{member}"' in line for line in rejected), member
    assert rig.client.prop(MODULE_PATH, "ExposureTime") != REFUSED_EXPOSURE
    assert sorted(os.listdir(rig.capture_dir)) == before


@pytest.mark.parametrize("who", ["camera member", "nobody with the camera gid"])
def test_a_member_of_the_camera_group_may_operate(rig, accounts, who):
    calls = [on_module("Claim", timeout_ms=30000),
             on_module("SetControls", "({'ExposureTime': <8000>},)"),
             on_module("Capture", "({'formats': <['jpeg']>},)", timeout_ms=60000),
             on_module("CaptureToFd", "(handle 0, {'format': <'jpeg'>})", fd=True,
                       timeout_ms=60000),
             on_module("Release"),
             OPERATES["Properties.Set"]]          # the camera group gets Module, nothing more
    creds, results = call_as(credentials(who, accounts), rig.bus.address, calls, timeout=120)
    assert accounts.gid("camera") in creds["groups"]
    *operated, set_property = results
    assert all("ok" in r for r in operated), operated
    claim, controls, capture, to_fd, release = operated
    paths = capture["ok"][0]["paths"]
    assert len(paths) == 1 and Path(paths[0]).parent == Path(rig.capture_dir)
    assert os.path.getsize(paths[0]) > 0
    assert os.stat(paths[0]).st_uid == accounts.uid(SERVICE_USER)   # modcamd wrote it
    assert capture["ok"][0]["exposure_time"] == 8000
    assert to_fd["fd_size"] > 0 and to_fd["fd_head"].startswith("ffd8")      # a JPEG
    assert set_property.get("error") == DENIED


def test_root_may_operate(rig):
    c = rig.client
    c.module("Claim", MODULE_PATH)
    c.module("Release", MODULE_PATH)


@pytest.mark.parametrize("who", ["nobody", "camera member", "nobody with the camera gid", "root",
                                 "modcam"])
def test_only_root_and_the_service_user_may_own_the_name(accounts, who):
    # Its own bus, with no modcamd: the name is free, only the policy decides.
    # (Not in tmp_path: pytest's base directory is closed to other users.)
    tmp = tempfile.TemporaryDirectory(prefix="modcam-own-")
    bus = SystemLikeBus(tmp.name)
    try:
        _, (request,) = call_as(credentials(who, accounts), bus.address,
                                [call(*BUS, "RequestName", f"('{names.BUS_NAME}', uint32 4)")])
    finally:
        bus.close()
        tmp.cleanup()
    if who in ("root", "modcam"):
        assert request == {"ok": [1]}, request     # DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER
    else:
        assert request.get("error") == DENIED, request
        assert "due to security policies" in request["message"], request
