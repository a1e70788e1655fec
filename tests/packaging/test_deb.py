"""The Debian package, built, installed, used and purged on this machine.

`make deb` builds build/deb/modcam_VERSION_ARCH.deb from packaging/debian/
and runs lintian on it (errors fail the build); it rebuilds only when an
input of the package is newer than the .deb (packaging/deb.mk), so a second
run reuses it. Then, against the installed files only:

* apt-get installs it with its dependencies; the programs, the package with
  its native extension, the man pages and, byte for byte, the D-Bus files of
  dbus/ and the unit, udev rule, sysusers.d and tmpfiles.d files of
  packaging/ are where they belong, and the postinst created the service
  user and group through systemd-sysusers;
* the smoke path: a system-like dbus-daemon with the *installed* policy,
  the installed /usr/bin/modcamd as the user `modcam` (as the unit runs it)
  with its default capture directory, the installed modcam-virtual-module
  plugged into a umockdev testbed; root claims the module and captures a
  JPEG, which modcamd writes under /var/lib/modcam/captures;
* `apt-get purge` leaves none of the package's files, no maintainer-script
  state (dpkg's info files, deb-systemd-helper's enablement links) and no
  /var/lib/modcam (its postrm removes it on purge, pictures included); the
  user `modcam` and the group `camera` stay, as Debian leaves system users
  and groups on purge (files they own may survive elsewhere, and their ids
  must never pass to someone else).

The programs run with the machine's /usr/bin/python3 from `/`, with no
PYTHONPATH, so only the installed package can be imported; the daemon's
memory map shows the installed _native extension. A modcam package already
installed is purged first: the test needs a first installation.
"""
from __future__ import annotations

import glob
import grp
import gzip
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import tomllib
from pathlib import Path

import pytest
from gi.repository import Gio, GLib

from modcam import names
from tests.support.daemon import BusClient
from tests.support.system_bus import CAMERA_GROUP, SERVICE_USER, SystemLikeBus, plain_env
from tests.support.testbed import REPO_ROOT, UdevTestbed

pytestmark = [
    pytest.mark.slow,
    pytest.mark.umockdev,
    pytest.mark.skipif(os.geteuid() != 0, reason="installs a Debian package: needs root"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("apt-get", "dpkg-buildpackage",
                                                         "dbus-daemon", "setpriv")),
                       reason="needs apt-get, dpkg-dev, dbus-daemon and setpriv"),
]

PACKAGE = "modcam"
SERIAL = "MC0401"
MODULE_PATH = f"{names.MODULES_PATH}/{SERIAL}"
NATIVE = re.compile(r"/usr/lib/python3/dist-packages/modcam/_native\..*so")
CAPTURE_DIR = Path("/var/lib/modcam/captures")       # modcamd's default (modcam.config)
POLICY = Path("/usr/share/dbus-1/system.d/org.modcam.Camera1.conf")
PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
PROGRAMS = sorted(PROJECT["scripts"])                 # modcamd, modcamctl, ...
INSTALLED = [
    *(f"/usr/bin/{prog}" for prog in PROGRAMS),
    *(f"/usr/share/man/man1/{prog}.1.gz" for prog in PROGRAMS),
    "/usr/lib/python3/dist-packages/modcam/__init__.py",
    "/usr/lib/python3/dist-packages/modcam/service.py",
    "/usr/share/dbus-1/interfaces/org.modcam.Camera1.Manager.xml",
    "/usr/share/dbus-1/interfaces/org.modcam.Camera1.Module.xml",
    str(POLICY),
    "/usr/share/dbus-1/system-services/org.modcam.Camera1.service",
    "/usr/share/doc/modcam/copyright",
]
# Installed unchanged from the checkout, under whatever names the files have
# (/lib rather than /usr/lib: Debian 12's place for units and udev rules).
INSTALLED_AS_IS = {
    "packaging/systemd/*.service": "/lib/systemd/system",
    "packaging/udev/*.rules": "/lib/udev/rules.d",
    "packaging/sysusers.d/*.conf": "/usr/lib/sysusers.d",
    "packaging/tmpfiles.d/*.conf": "/usr/lib/tmpfiles.d",
    "dbus/*.xml": "/usr/share/dbus-1/interfaces",
    "dbus/*.conf": "/usr/share/dbus-1/system.d",
    "dbus/*.service": "/usr/share/dbus-1/system-services",
}


def as_is() -> dict[Path, str]:
    """Checkout file -> its installed path."""
    return {Path(source): f"{target}/{os.path.basename(source)}"
            for pattern, target in INSTALLED_AS_IS.items()
            for source in sorted(glob.glob(str(REPO_ROOT / pattern)))}


def quiet_env(**extra) -> dict:
    """No umockdev preload (apt, make and the module need none) and nothing that
    would let Python import anything but the installed package."""
    env = plain_env({"HOME": os.environ.get("HOME", "/root")})
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"):
        env.pop(name, None)
    env.update(extra)
    return env


def run(argv: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                         env=kw.pop("env", None) or quiet_env(), **kw)
    assert res.returncode == 0, (f"{' '.join(argv)} failed ({res.returncode}):\n"
                                 f"{res.stdout[-6000:]}\n{res.stderr[-6000:]}")
    return res


def apt_get(*args: str) -> subprocess.CompletedProcess:
    return run(["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=120", *args], timeout=600,
               env=quiet_env(DEBIAN_FRONTEND="noninteractive"), cwd=REPO_ROOT)


def installed(package: str = PACKAGE) -> bool:
    res = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", package],
                         capture_output=True, text=True, env=quiet_env())
    return res.returncode == 0 and res.stdout not in ("", "not-installed")


def changelog_version() -> str:
    return run(["dpkg-parsechangelog", "-l", "packaging/debian/changelog", "-S", "Version"],
               cwd=REPO_ROOT).stdout.strip()


@pytest.fixture(scope="module")
def deb() -> Path:
    t0 = time.monotonic()
    run(["make", "--no-print-directory", "deb"], timeout=900, cwd=REPO_ROOT)
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    path = REPO_ROOT / "build" / "deb" / f"{PACKAGE}_{changelog_version()}_{arch}.deb"
    assert path.is_file(), f"make deb made no {path}"
    print(f"make deb: {time.monotonic() - t0:.1f} s")
    return path


def test_the_package_version_is_the_project_version():
    # packaging/debian is native: its version is the project's own.
    assert changelog_version() == PROJECT["version"]


def test_the_package_holds_the_native_extension_and_the_system_files(deb):
    listing = run(["dpkg-deb", "-c", str(deb)]).stdout
    paths = {line.split()[5].lstrip(".") for line in listing.splitlines()}
    assert any(NATIVE.fullmatch(p) for p in paths), listing
    assert len(as_is()) >= 7, as_is()          # one of each kind, at least
    missing = [p for p in [*INSTALLED, *as_is().values()] if p not in paths]
    assert not missing, f"not in the package: {missing}"
    depends = run(["dpkg-deb", "-f", str(deb), "Depends"]).stdout
    # systemd-sysusers runs in the postinst: dh_installsysusers depends on it.
    assert "systemd-sysusers" in depends and "python3-numpy" in depends, depends


class SmokeRig:
    """The system-like bus with the installed policy, the installed modcamd as
    `modcam`, and the installed virtual module plugged into a testbed."""

    def __init__(self):
        self.user = pwd.getpwnam(SERVICE_USER)
        self.tmp = tempfile.TemporaryDirectory(prefix="modcam-deb-")
        os.chmod(self.tmp.name, 0o755)              # modcam reaches the bus socket
        self.bus = self.client = self.bed = self.vm = self.daemon = None
        self.daemon_log: list[str] = []
        self.vm_log: list[str] = []
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        bus_dir = os.path.join(self.tmp.name, "bus")
        os.mkdir(bus_dir)
        # Started after the installation: dbus-daemon resolves the policy's
        # users and groups when it loads it, so they must exist by then.
        self.bus = SystemLikeBus(bus_dir, policy_files=(POLICY,))
        self.client = BusClient(self.bus.address)
        self.bed = UdevTestbed()
        # modcamd binds its uevent socket in the testbed root and reads its /sys.
        os.chown(self.bed.root_dir, self.user.pw_uid, self.user.pw_gid)
        self.vm, self.control = self._start_module()
        self.daemon = self._start_daemon()

    def _start_module(self) -> tuple[subprocess.Popen, str]:
        control = os.path.join(self.bed.root_dir, f"{SERIAL}.sock")
        proc = subprocess.Popen(
            ["/usr/bin/modcam-virtual-module", "run", "--serial", SERIAL, "--control", control,
             "--sensor", "1152x864", "--boot-seconds", "0.3"],
            env=quiet_env(), cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        for line in proc.stdout:
            if line.strip() == "MODCAM_READY=1":
                break
        else:
            raise AssertionError(f"the installed virtual module did not start: {proc.wait()}")
        # Drained, so that its output never blocks it.
        threading.Thread(target=self.vm_log.extend, args=(proc.stdout,), daemon=True).start()
        # As a udev rule would for the real device node: the service user's.
        os.chown(control, self.user.pw_uid, self.user.pw_gid)
        return proc, control

    def _start_daemon(self) -> subprocess.Popen:
        env = self.bed.bed.env(quiet_env(HOME=self.user.pw_dir))   # the testbed, no checkout
        # As the installed unit runs it: User=modcam, Group=camera, UMask=0027.
        as_service = ["setpriv", f"--reuid={self.user.pw_uid}",
                      f"--regid={grp.getgrnam(CAMERA_GROUP).gr_gid}", "--init-groups"]
        proc = subprocess.Popen(
            [*as_service, "/usr/bin/modcamd", "--bus", self.bus.address,
             "--idle-timeout", "30", "--boot-timeout", "10", "--log-level", "debug"],
            env=env, cwd="/", umask=0o027, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        threading.Thread(target=self.daemon_log.extend, args=(proc.stderr,), daemon=True).start()

        def owned():
            if proc.poll() is not None:
                raise AssertionError(f"modcamd exited with {proc.returncode}:\n{self.log}")
            try:
                return self.client.conn.call_sync(
                    "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                    "GetNameOwner", GLib.Variant("(s)", (names.BUS_NAME,)), None,
                    Gio.DBusCallFlags.NONE, 1000, None)
            except GLib.Error:          # not owned yet
                return None
        self.client.eventually(owned, 30, "the installed modcamd to own its name")
        return proc

    @property
    def log(self) -> str:
        return ("".join(self.daemon_log)
                + "\n---- virtual module ----\n" + "".join(self.vm_log)
                + "\n---- dbus-daemon ----\n" + (self.bus.log if self.bus else ""))

    def close(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(15)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        if self.bed is not None and self.bed.bed.syspath_of(SERIAL):
            self.bed.unplug(SERIAL)
        if self.vm is not None:
            self.vm.terminate()
            try:
                self.vm.wait(10)
            except subprocess.TimeoutExpired:
                self.vm.kill()
                self.vm.wait()
        for part in (self.client, self.bus, self.bed):
            if part is not None:
                part.close()
        self.tmp.cleanup()


def check_installed_files(listed: list[str]) -> None:
    missing = [p for p in INSTALLED if p not in listed or not os.path.exists(p)]
    assert not missing, f"not installed: {missing}"
    changed = [str(src) for src, dst in as_is().items()
               if dst not in listed or Path(dst).read_bytes() != src.read_bytes()]
    assert not changed, f"not installed as they are in the checkout: {changed}"
    native = [p for p in listed if NATIVE.fullmatch(p)]
    assert native and all(os.path.isfile(p) for p in native), native
    for prog in PROGRAMS:
        with gzip.open(f"/usr/share/man/man1/{prog}.1.gz", "rt") as f:
            text = f.read()
        # A NAME of its own (packaging/debian/PROGRAM.h2m), not help2man's stand-in.
        name = text.split("\n.SH NAME\n", 1)[1].split("\n.SH ", 1)[0]
        assert name.startswith(f"{prog} \\- ") and "manual page for" not in name, name
        assert "\n.SH DESCRIPTION\n" in text, prog
    # The installed programs import the installed package (/usr/bin/python3, no checkout).
    out = run(["/usr/bin/modcamd", "--version"], cwd="/").stdout
    assert out.strip() == f"modcamd {changelog_version()}", out
    where = run(["/usr/bin/python3", "-c", "import modcam.native as n; print(n.build_path)"],
                cwd="/").stdout.strip()
    assert where == native[0], where
    run(["/usr/bin/modcamctl", "--help"], cwd="/")


def check_accounts(listed: list[str]) -> None:
    postinst = Path(f"/var/lib/dpkg/info/{PACKAGE}.postinst").read_text()
    assert "systemd-sysusers" in postinst, "dh_installsysusers wrote no postinst snippet"
    user = pwd.getpwnam(SERVICE_USER)          # KeyError: the postinst made no user
    assert user.pw_uid < 1000 and user.pw_shell.endswith("nologin"), user
    assert grp.getgrnam(CAMERA_GROUP).gr_gid < 1000
    # The user may predate the package (an earlier installation, another
    # test): the installed file must also make both on a machine without them.
    ours = [p for p in listed if re.fullmatch(r"/usr/lib/sysusers\.d/.*\.conf", p)]
    with tempfile.TemporaryDirectory() as root:
        os.mkdir(os.path.join(root, "etc"))
        run(["systemd-sysusers", f"--root={root}", *ours])
        assert re.search(rf"^{SERVICE_USER}:", Path(root, "etc/passwd").read_text(), re.M)
        assert re.search(rf"^{CAMERA_GROUP}:", Path(root, "etc/group").read_text(), re.M)


def smoke(rig: SmokeRig) -> None:
    c = rig.client
    pid = rig.daemon.pid
    with open(f"/proc/{pid}/maps") as f:
        assert "/usr/lib/python3/dist-packages/modcam/_native." in f.read()
    mark = len(c.signals)
    rig.bed.plug(SERIAL, rig.control)
    c.wait_signal("ModuleAdded", after=mark)
    c.eventually(lambda: c.prop(MODULE_PATH, "Model"), 10, "the module's identity")
    c.module("Claim", MODULE_PATH, timeout=30)
    res = c.module("Capture", MODULE_PATH, [{"formats": GLib.Variant("as", ["jpeg"])}], "a{sv}",
                   timeout=60)
    (path,) = res["paths"]
    assert Path(path).parent == CAPTURE_DIR, path
    st = os.stat(path)
    assert st.st_size == res["sizes"][0] > 0
    # The installed sysusers.d and tmpfiles.d files at work: the camera group
    # may read the picture, nobody else.
    assert (st.st_uid, st.st_gid) == (rig.user.pw_uid, grp.getgrnam(CAMERA_GROUP).gr_gid)
    assert st.st_mode & 0o007 == 0 and st.st_mode & 0o040, oct(st.st_mode)
    parent = os.stat(CAPTURE_DIR)
    assert (parent.st_uid, parent.st_gid, parent.st_mode & 0o777) == \
        (rig.user.pw_uid, st.st_gid, 0o750)
    with open(path, "rb") as f:
        assert f.read(2) == b"\xff\xd8"                  # a JPEG
    c.module("Release", MODULE_PATH)
    rig.daemon.send_signal(signal.SIGTERM)
    assert rig.daemon.wait(15) == 0, rig.log
    # The accounts the installed policy names exist, so the bus loaded it cleanly.
    assert "Unknown" not in rig.bus.log, rig.bus.log


def check_purged(listed: list[str]) -> None:
    assert not installed(), "still installed, or its configuration files are left"
    # What remains must belong to other packages too: /usr/bin, /lib (a
    # symlink on a merged-/usr system), /lib/udev/rules.d, ...
    left = [p for p in listed if os.path.lexists(p)]
    owners = subprocess.run(["dpkg", "-S", *left], capture_output=True, text=True,
                            env=quiet_env()).stdout if left else ""
    shared = {line.split(": ", 1)[1] for line in owners.splitlines() if ": " in line}
    assert not [p for p in left if p not in shared], \
        f"left behind: {[p for p in left if p not in shared]}"
    leftovers = (glob.glob(f"/var/lib/dpkg/info/{PACKAGE}.*")
                 + glob.glob("/var/lib/modcam") + glob.glob("/usr/lib/python3/dist-packages/modcam")
                 + glob.glob("/etc/systemd/system/**/modcamd*", recursive=True)
                 + glob.glob("/var/lib/systemd/deb-systemd-helper-*/**/modcamd*",
                             recursive=True))
    assert not leftovers, f"left behind: {leftovers}"
    # Debian does not remove system users and groups on purge (files they own
    # may remain, and their ids must not pass to someone else): both stay.
    assert pwd.getpwnam(SERVICE_USER).pw_uid < 1000
    assert grp.getgrnam(CAMERA_GROUP).gr_gid < 1000


def test_install_smoke_and_purge(deb):
    if installed():
        apt_get("purge", PACKAGE)
    t0 = time.monotonic()
    try:
        # A path, so apt installs this file and pulls its Depends from the archive.
        apt_get("install", f"./{deb.relative_to(REPO_ROOT)}")
        listed = [p for p in run(["dpkg", "-L", PACKAGE]).stdout.split() if p != "/."]
        check_installed_files(listed)
        check_accounts(listed)
        t_install = time.monotonic()
        rig = SmokeRig()
        try:
            smoke(rig)
        except BaseException:
            print("---- modcamd log ----\n" + rig.log[-20000:])
            raise
        finally:
            rig.close()
        t_smoke = time.monotonic()
        apt_get("purge", PACKAGE)
        check_purged(listed)
        print(f"install {t_install - t0:.1f} s, smoke {t_smoke - t_install:.1f} s, "
              f"purge {time.monotonic() - t_smoke:.1f} s")
    finally:
        if installed():
            apt_get("purge", PACKAGE)
