"""A system-like bus for testing the bus policy, and callers under other credentials.

* ``system_bus_config()``: a dbus-daemon config of ``<type>system</type>``
  with Debian's default policy (deny own and deny method calls unless a
  service file punches a hole; signals, replies and receiving allowed) taken
  from the installed /usr/share/dbus-1/system.conf, plus our
  dbus/org.modcam.Camera1.conf included as the package installs it. No
  service directories (no activation), a temporary unix socket, no fork, no
  <user> switch, no pid file, no syslog.
* ``SystemLikeBus``: that dbus-daemon, reachable by every user.
* ``Accounts``: the service user ``modcam``, the ``camera`` group and a
  member of it, created for the test when missing and removed afterwards
  only if the test created them. dbus-daemon resolves the names in policy
  rules through NSS when it loads its config and drops a rule naming an
  unknown account (one warning line), so the accounts must be real and exist
  before the bus starts. A caller is then matched by its process credentials
  (uid, gid, supplementary groups from the socket), not by /etc/group.
* ``as_user()``: a setpriv prefix that runs a process with a user's real
  credentials (uid, gid and supplementary groups).
* ``call_as()``: a small Gio client run under such a prefix; each call's
  reply or D-Bus error name comes back as JSON.
"""
from __future__ import annotations

import grp
import json
import os
import pwd
import re
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.support.daemon import PrivateBus
from tests.support.testbed import REPO_ROOT

DEBIAN_SYSTEM_CONF = Path("/usr/share/dbus-1/system.conf")
POLICY_FILE = REPO_ROOT / "dbus" / "org.modcam.Camera1.conf"

SERVICE_USER = "modcam"
CAMERA_GROUP = "camera"
MEMBER_USER = "modcam-test-camera"     # a person in the camera group, for the test only

_HEADER = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
"""


def debian_default_policies(path: Path = DEBIAN_SYSTEM_CONF) -> list[str]:
    """The <policy> elements of the installed system.conf, verbatim.

    Only the policies: its <listen>, <user>, <fork>, <pidfile>, service
    directories and <includedir>s belong to the machine's real system bus.
    """
    root = ET.parse(path).getroot()
    policies = [ET.tostring(p, encoding="unicode") for p in root.findall("policy")]
    if not any(p.get("context") == "default" for p in root.findall("policy")):
        raise RuntimeError(f"{path} has no default policy")
    return policies


def system_bus_config(socket: str, policy_files=(POLICY_FILE,)) -> str:
    includes = "".join(f"  <include>{os.path.abspath(f)}</include>\n" for f in policy_files)
    policies = "".join(f"  {p.strip()}\n" for p in debian_default_policies())
    return (f"{_HEADER}<busconfig>\n"
            "  <type>system</type>\n"
            f"  <listen>unix:path={socket}</listen>\n"
            "  <auth>EXTERNAL</auth>\n"
            f"{policies}{includes}</busconfig>\n")


class SystemLikeBus(PrivateBus):
    """A dbus-daemon with the system bus's default policy and our policy file."""

    def __init__(self, directory: str, policy_files=(POLICY_FILE,)):
        os.chmod(directory, 0o755)             # other users must reach the socket
        socket = os.path.join(directory, "bus")
        super().__init__(directory, system_bus_config(socket, policy_files))
        # Every refusal is a line on stderr: read them, or a full pipe stalls the bus.
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self._lines.append(line)

    @property
    def log(self) -> str:
        """What dbus-daemon said: "Rejected send message ..." lines, config warnings."""
        return "".join(self._lines)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        self._reader.join(5)
        super().close()


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30)


def _id(kind: str, name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid if kind == "user" else grp.getgrnam(name).gr_gid
    except KeyError:
        return None


class Accounts:
    """modcam, camera and a camera member: ensured on enter, removed on close if ours."""

    def __init__(self):
        self.created: list[tuple[str, str, int]] = []   # (kind, name, id), in creation order

    def _group(self, name: str) -> None:
        if _id("group", name) is None:
            _run(["groupadd", "--system", name])
            self.created.append(("group", name, _id("group", name)))

    def _user(self, name: str, *extra: str) -> None:
        if _id("user", name) is not None:
            return
        self._group(name)                      # its own primary group, as sysusers.d does
        _run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
              "--shell", "/usr/sbin/nologin", "--gid", name, *extra, name])
        self.created.append(("user", name, _id("user", name)))

    def ensure(self) -> "Accounts":
        try:
            self._group(CAMERA_GROUP)
            self._user(SERVICE_USER)
            self._user(MEMBER_USER, "--groups", CAMERA_GROUP)
            if MEMBER_USER not in grp.getgrnam(CAMERA_GROUP).gr_mem:
                raise RuntimeError(f"user {MEMBER_USER} exists but is not in group "
                                   f"{CAMERA_GROUP}")
        except BaseException:
            self.close()
            raise
        return self

    def uid(self, user: str) -> int:
        return pwd.getpwnam(user).pw_uid

    def gid(self, group: str) -> int:
        return grp.getgrnam(group).gr_gid

    def close(self) -> None:
        # Users before groups: a group that is someone's primary group cannot go.
        # An account whose id changed meanwhile was replaced by someone else: kept.
        for kind, name, ident in sorted(reversed(self.created), key=lambda c: c[0] != "user"):
            if _id(kind, name) == ident:
                _run(["userdel" if kind == "user" else "groupdel", name])
        self.created.clear()


def as_user(user: str) -> list[str]:
    """setpriv prefix: `user`'s uid and primary gid, supplementary groups from /etc/group."""
    pw = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups"]


def as_user_without_groups(user: str) -> list[str]:
    """setpriv prefix: `user`'s uid and primary gid, no supplementary groups."""
    pw = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups"]


def plain_env(extra: dict | None = None) -> dict:
    """This process's environment without the umockdev testbed: a caller is not a daemon."""
    env = {k: v for k, v in os.environ.items() if k not in ("UMOCKDEV_DIR",)}
    preload = [p for p in re.split(r"[: ]+", env.get("LD_PRELOAD", ""))
               if p and "libumockdev-preload" not in p]
    if preload:
        env["LD_PRELOAD"] = ":".join(preload)
    else:
        env.pop("LD_PRELOAD", None)
    env["HOME"] = "/nonexistent"
    env.update(extra or {})
    return env


CALLER = r"""
import json, os, sys
from gi.repository import Gio, GLib
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups())}),
      flush=True)
conn = Gio.DBusConnection.new_for_address_sync(sys.argv[1],
    Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
    | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION, None, None)
for spec in json.loads(sys.argv[2]):
    params = GLib.Variant.parse(None, spec["args"], None, None) if spec.get("args") else None
    fd = fds = None
    if spec.get("fd"):
        fd = os.memfd_create("picture")
        fds = Gio.UnixFDList.new_from_array([os.dup(fd)])   # the list owns what it gets
    try:
        reply, _ = conn.call_with_unix_fd_list_sync(
            spec["dest"], spec["path"], spec["interface"], spec["method"], params, None,
            Gio.DBusCallFlags.NONE, spec.get("timeout_ms", 30000), fds, None)
        out = {"ok": reply.unpack()}
        if fd is not None:
            out["fd_size"] = os.fstat(fd).st_size
            out["fd_head"] = os.pread(fd, 4, 0).hex()
    except GLib.Error as exc:
        name = Gio.DBusError.get_remote_error(exc) or ""
        Gio.DBusError.strip_remote_error(exc)
        out = {"error": name, "message": exc.message}
    print(json.dumps(out, default=repr), flush=True)
"""


def call(dest: str, path: str, interface: str, method: str, args: str | None = None,
         **kw) -> dict:
    """One call for ``call_as``; `args` in GVariant text format, e.g. "({'a': <1>},)"."""
    return {"dest": dest, "path": path, "interface": interface, "method": method,
            "args": args, **kw}


def call_as(prefix: list[str], address: str, calls: list[dict],
            timeout: float = 60.0) -> tuple[dict, list[dict]]:
    """Run the calls in one process under `prefix`; returns (its credentials, one result each)."""
    run = subprocess.run([*prefix, sys.executable, "-c", CALLER, address, json.dumps(calls)],
                         capture_output=True, text=True, timeout=timeout, env=plain_env(),
                         cwd="/")
    lines = run.stdout.splitlines()
    if run.returncode != 0 or len(lines) != len(calls) + 1:
        raise AssertionError(f"caller under {' '.join(prefix)} failed (rc={run.returncode}):\n"
                             f"{run.stdout}\n{run.stderr}")
    who, *results = (json.loads(line) for line in lines)
    return who, results
