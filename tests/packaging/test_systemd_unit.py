"""packaging/systemd/modcamd.service: its exposure score, that systemd
accepts it, that it agrees with the rest of the package (sysusers.d and
tmpfiles.d included), and that modcamd really works inside its seccomp
sandbox.

systemd is not PID 1 where this suite runs, so the sandbox cannot come from
systemd itself.  What can be rebuilt exactly is the part that decides whether
Python, GLib, numpy and cffi run at all: the seccomp filters.
`sandbox_filters()` reads the unit's SystemCallFilter=,
SystemCallErrorNumber=, SystemCallArchitectures=, MemoryDenyWriteExecute=,
RestrictAddressFamilies=, RestrictRealtime=, RestrictSUIDSGID=,
RestrictNamespaces= and LockPersonality=, expands the groups with
`systemd-analyze syscall-filter` (the tables systemd itself compiles in), and
builds the filters systemd 252 builds for them (src/shared/seccomp-util.c),
in its order, with libseccomp.  Run as a script, this file installs them and
then execs a command, so that everything from that execve on runs filtered,
as under systemd:

    python tests/packaging/test_systemd_unit.py --seccomp-exec SPEC.json -- CMD ARGS...

Not rebuilt: the mount namespace (ProtectSystem=, PrivateTmp=, ProcSubset=
...), PrivateUsers= and the device cgroup; the unit's comments give the
reasons each holds.  ProtectClock=, ProtectKernelModules=,
ProtectKernelLogs=, ProtectKernelTunables= and ProtectHostname= add seccomp
rules too, but only for calls the SystemCallFilter= set refuses anyway
(`test_the_other_seccomp_settings_refuse_nothing_more`).
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "packaging" / "systemd" / "modcamd.service"
SYSUSERS = REPO / "packaging" / "sysusers.d" / "modcam.conf"
TMPFILES = REPO / "packaging" / "tmpfiles.d" / "modcam.conf"
BUS_POLICY = REPO / "dbus" / "org.modcam.Camera1.conf"
BUS_ACTIVATION = REPO / "dbus" / "org.modcam.Camera1.service"
MAX_EXPOSURE = 1.5
# systemd-analyze's --threshold is ten times the score it prints (0..100).
THRESHOLD = round(MAX_EXPOSURE * 10)
# Stable, uncoloured output whatever the caller's locale and terminal.
ANALYZE_ENV = {**os.environ, "LC_ALL": "C.UTF-8", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}


# --- the unit file ------------------------------------------------------------

def unit_settings(section: str = "Service", path: Path = UNIT) -> list[tuple[str, str]]:
    """One section's assignments, in order (repeated keys kept)."""
    out, current = [], None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section:
            key, _, value = line.partition("=")
            out.append((key.strip(), value.strip()))
    return out


def setting(settings: list[tuple[str, str]], key: str) -> str | None:
    """The last value of `key` (systemd's rule for single-valued settings)."""
    values = [v for k, v in settings if k == key]
    return values[-1] if values else None


def analyze(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True,
                          env=ANALYZE_ENV, timeout=120)


# --- SystemCallFilter= as systemd computes it -----------------------------------

def syscall_groups() -> dict[str, list[str]]:
    """Every @group with its entries (calls and nested @groups), from systemd."""
    res = analyze("syscall-filter")
    assert res.returncode == 0, res.stderr
    groups: dict[str, list[str]] = {}
    current = None
    for line in res.stdout.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif not line.strip():
            current = None
        elif current is not None and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(name: str, groups: dict[str, list[str]]) -> set[str]:
    if not name.startswith("@"):
        return {name}
    assert name in groups, f"unknown system call group {name}"
    return set().union(*(expand(entry, groups) for entry in groups[name]))


def allowed_syscalls(settings, groups) -> set[str]:
    """The allow-list the SystemCallFilter= lines make (systemd's
    config_parse_syscall_filter): the first positive line starts a list seeded
    with @default, later lines add names, `~` lines take them out again."""
    allowed: set[str] | None = None
    for key, value in settings:
        if key != "SystemCallFilter":
            continue
        if not value:
            allowed = None
            continue
        invert = value.startswith("~")
        if allowed is None:
            assert not invert, "only an allow-list is rebuilt here"
            allowed = expand("@default", groups)
        for name in value.lstrip("~").split():
            assert ":" not in name, "per-call errno values are not rebuilt here"
            allowed = allowed - expand(name, groups) if invert else allowed | expand(name, groups)
    assert allowed, "the unit sets no SystemCallFilter= allow-list"
    return allowed


# --- the filters, as data -----------------------------------------------------

# libseccomp 2.5's constants (seccomp.h), and the kernel's (the same on x86-64 and arm64).
ACT_KILL_PROCESS, ACT_KILL_THREAD, ACT_ALLOW = 0x80000000, 0x00000000, 0x7FFF0000
CMP_NE, CMP_LT, CMP_EQ, CMP_GT, CMP_MASKED_EQ = 1, 2, 4, 6, 7
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
O_CREAT, S_ISUID, S_ISGID = 0o100, 0o4000, 0o2000
SCHED_OTHER, SCHED_BATCH, SCHED_IDLE = 0, 3, 5
PER_LINUX = 0
NAMESPACE_FLAGS = (0x02000000, 0x00020000, 0x08000000, 0x40000000,   # cgroup mnt ipc net
                   0x20000000, 0x10000000, 0x04000000)               # pid user uts


def act_errno(number: int) -> int:
    return 0x00050000 | (number & 0xFFFF)


def _filter(default: int, rules: list, badarch: int = ACT_ALLOW) -> dict:
    return {"default": default, "badarch": badarch, "rules": rules}


def _masked(arg: int, bits: int) -> list:
    """Argument `arg` has all of `bits` set."""
    return [arg, CMP_MASKED_EQ, bits, bits]


def _address_families(value: str) -> dict:
    assert not value.startswith("~"), "only an allow-list is rebuilt here"
    allowed = sorted(int(getattr(socket, name)) for name in value.split())
    deny = act_errno(errno.EAFNOSUPPORT)
    rules = [[deny, "socket", [[0, CMP_LT, allowed[0], 0]]],
             [deny, "socket", [[0, CMP_GT, allowed[-1], 0]]]]
    rules += [[deny, "socket", [[0, CMP_EQ, af, 0]]]
              for af in range(allowed[0] + 1, allowed[-1]) if af not in allowed]
    return _filter(ACT_ALLOW, rules)


def _write_xor_execute() -> dict:
    eperm = act_errno(errno.EPERM)
    return _filter(ACT_ALLOW, [[eperm, "mmap", [_masked(2, PROT_EXEC | PROT_WRITE)]],
                               [eperm, "mprotect", [_masked(2, PROT_EXEC)]],
                               [eperm, "pkey_mprotect", [_masked(2, PROT_EXEC)]],
                               [eperm, "shmat", [_masked(2, SHM_EXEC)]]])


def _no_realtime() -> dict:
    eperm = act_errno(errno.EPERM)
    # Policies other than OTHER, BATCH and IDLE: FIFO, RR, 4, DEADLINE and up.
    rules = [[eperm, "sched_setscheduler", [[1, CMP_EQ, policy, 0]]]
             for policy in range(SCHED_IDLE) if policy not in (SCHED_OTHER, SCHED_BATCH)]
    rules.append([eperm, "sched_setscheduler", [[1, CMP_GT, SCHED_IDLE, 0]]])
    return _filter(ACT_ALLOW, rules)


def _no_suid_sgid() -> dict:
    eperm = act_errno(errno.EPERM)
    # openat2()'s flags sit in a struct too: refused as if the kernel were older.
    rules = [[act_errno(errno.ENOSYS), "openat2", []]]
    for bit in (S_ISUID, S_ISGID):
        rules += [[eperm, call, [_masked(arg, bit)]] for call, arg in (
            ("chmod", 1), ("fchmod", 1), ("fchmodat", 2), ("mkdir", 1), ("mkdirat", 2),
            ("mknod", 1), ("mknodat", 2), ("creat", 1))]
        rules += [[eperm, "open", [_masked(1, O_CREAT), _masked(2, bit)]],
                  [eperm, "openat", [_masked(2, O_CREAT), _masked(3, bit)]]]
    return _filter(ACT_ALLOW, rules)


def _no_namespaces() -> dict:
    eperm = act_errno(errno.EPERM)
    # clone3()'s flags sit in a struct seccomp cannot read: systemd refuses
    # the whole call with ENOSYS, so that glibc falls back to clone().
    rules = [[act_errno(errno.ENOSYS), "clone3", []], [eperm, "setns", []]]
    for flag in NAMESPACE_FLAGS:
        rules += [[eperm, call, [_masked(0, flag)]] for call in ("unshare", "clone")]
    return _filter(ACT_ALLOW, rules)


def sandbox_filters(settings, groups) -> list[dict]:
    """The unit's seccomp filters, in the order systemd's exec_child() loads
    them (the system call filter last, right before execve).  A rule is
    [action, call name, [[arg, op, a, b], ...]]."""
    filters = []
    if setting(settings, "RestrictAddressFamilies"):
        filters.append(_address_families(setting(settings, "RestrictAddressFamilies")))
    if setting(settings, "MemoryDenyWriteExecute") == "yes":
        filters.append(_write_xor_execute())
    if setting(settings, "RestrictRealtime") == "yes":
        filters.append(_no_realtime())
    if setting(settings, "RestrictSUIDSGID") == "yes":
        filters.append(_no_suid_sgid())
    if setting(settings, "RestrictNamespaces") not in (None, "no"):
        assert setting(settings, "RestrictNamespaces") == "yes", "only =yes is rebuilt here"
        filters.append(_no_namespaces())
    if setting(settings, "SystemCallArchitectures") == "native":
        # No rules, the native architecture only: another ABI's call (i386,
        # x32) meets libseccomp's default bad-architecture action, as there.
        filters.append(_filter(ACT_ALLOW, [], badarch=ACT_KILL_THREAD))
    if setting(settings, "LockPersonality") == "yes":
        filters.append(_filter(ACT_ALLOW, [[act_errno(errno.EPERM), "personality",
                                            [[0, CMP_NE, PER_LINUX, 0]]]]))
    number = setting(settings, "SystemCallErrorNumber")
    default = ACT_KILL_PROCESS if number in (None, "kill") else act_errno(getattr(errno, number))
    filters.append(_filter(default, [[ACT_ALLOW, name, []]
                                     for name in sorted(allowed_syscalls(settings, groups))]))
    return filters


# --- the filters, installed: the script side of this file --------------------------

class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def install_filters(filters: list[dict]) -> None:
    """Load the filters into this process with libseccomp, which sets
    no_new_privs first (as NoNewPrivileges=yes does)."""
    lib = ctypes.CDLL("libseccomp.so.2")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_exact_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                                 ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    attr_act_badarch = 2      # SCMP_FLTATR_ACT_BADARCH
    for spec in filters:
        ctx = lib.seccomp_init(spec["default"])
        if not ctx:
            raise OSError("seccomp_init failed")
        try:
            if lib.seccomp_attr_set(ctx, attr_act_badarch, spec["badarch"]) < 0:
                raise OSError("seccomp_attr_set(SCMP_FLTATR_ACT_BADARCH) failed")
            for action, name, args in spec["rules"]:
                nr = lib.seccomp_syscall_resolve_name(name.encode())
                if nr < 0:      # no such call on this architecture (mmap2...): systemd skips it too
                    continue
                cmps = (_ArgCmp * max(1, len(args)))(*[_ArgCmp(*a) for a in args])
                rc = lib.seccomp_rule_add_exact_array(ctx, action, nr, len(args), cmps)
                if rc < 0 and rc != -errno.EDOM:
                    raise OSError(-rc, f"cannot add the seccomp rule for {name}()")
            rc = lib.seccomp_load(ctx)
            if rc < 0:
                raise OSError(-rc, "seccomp_load failed")
        finally:
            lib.seccomp_release(ctx)


def seccomp_exec(argv: list[str]) -> None:
    spec_path, separator, *command = argv
    if separator != "--" or not command:
        raise SystemExit("usage: test_systemd_unit.py --seccomp-exec SPEC.json -- CMD ARGS...")
    with open(spec_path) as f:
        install_filters(json.load(f))
    os.execvp(command[0], command)


if __name__ == "__main__":
    if sys.argv[1:2] != ["--seccomp-exec"]:
        raise SystemExit("usage: test_systemd_unit.py --seccomp-exec SPEC.json -- CMD ARGS...")
    seccomp_exec(sys.argv[2:])


# --- systemd's own checks ---------------------------------------------------------

def exposure(output: str) -> float:
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert match, f"no overall exposure level in:\n{output}"
    return float(match.group(1))


def test_exposure_is_at_most_1_5():
    res = analyze("security", "--offline=true", f"--threshold={THRESHOLD}", str(UNIT))
    assert res.returncode == 0, f"exposure above {MAX_EXPOSURE}:\n{res.stdout}{res.stderr}"
    assert exposure(res.stdout) <= MAX_EXPOSURE
    # The threshold is really applied: nothing passes a threshold of 0.
    strict = analyze("security", "--offline=true", "--threshold=0", str(UNIT))
    assert strict.returncode != 0


def test_every_remaining_exposure_is_explained_in_the_unit():
    res = analyze("security", "--offline=true", "--json=short", str(UNIT))
    assert res.returncode == 0, res.stderr
    open_items = [item["name"] for item in json.loads(res.stdout) if item["set"] is False]
    comments = "\n".join(line for line in UNIT.read_text().splitlines()
                         if line.lstrip().startswith("#"))
    for item in open_items:
        # "RestrictAddressFamilies=~AF_UNIX" -> RestrictAddressFamilies,
        # "RootDirectory=/RootImage=" -> RootDirectory or RootImage
        directives = [part.split("=")[0] for part in item.split("/") if part]
        assert any(f"{d}=" in comments for d in directives), \
            f"{item} stays open but no comment in {UNIT.name} says why"


def test_systemd_accepts_the_unit(tmp_path):
    # verify also checks that ExecStart= exists: point it at a stand-in, so
    # that this runs on a machine where modcam is not installed.
    stand_in = tmp_path / "modcamd"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    text = UNIT.read_text()
    assert "\nExecStart=/usr/bin/modcamd\n" in text
    unit = tmp_path / "modcamd.service"
    unit.write_text(text.replace("\nExecStart=/usr/bin/modcamd\n", f"\nExecStart={stand_in}\n"))
    res = analyze("verify", "--man=no", "--generators=no", str(unit))
    # No output at all: an unknown or misspelt setting is only a warning.
    assert (res.returncode, res.stdout + res.stderr) == (0, "")


def test_the_unit_agrees_with_the_rest_of_the_package():
    from modcam import config, names
    service, unit = unit_settings("Service"), unit_settings("Unit")
    assert setting(service, "ExecStart") == "/usr/bin/modcamd"
    assert setting(service, "Type") == "notify" and setting(service, "NotifyAccess") == "main"
    assert setting(service, "BusName") == names.BUS_NAME
    assert setting(service, "Restart") == "on-failure" and setting(service, "WatchdogSec")
    assert ("Requires", "dbus.socket") in unit and ("After", "dbus.socket") in unit
    # The user that may own the name, and the group that may operate cameras.
    user, group = setting(service, "User"), setting(service, "Group")
    policy = BUS_POLICY.read_text()
    assert re.search(rf'<policy user="{user}">\s*<allow own="{re.escape(names.BUS_NAME)}"/>',
                     policy)
    assert f'<policy group="{group}">' in policy and config.Config().camera_group == group
    activation = BUS_ACTIVATION.read_text()
    assert f"User={user}\n" in activation and "SystemdService=modcamd.service\n" in activation
    sysusers = [line.split() for line in SYSUSERS.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert ["u", user] in [fields[:2] for fields in sysusers]
    assert ["g", group] in [fields[:2] for fields in sysusers]
    # The default capture directory is the state directory systemd makes writable.
    state = setting(service, "StateDirectory").split()
    assert config.Config().capture_dir == Path("/var/lib") / state[-1]


def test_sysusers_and_tmpfiles_make_what_the_unit_expects(tmp_path):
    """Into an empty root: the system user and group, then the directories,
    owned and moded as the unit's User=, Group= and StateDirectoryMode= say."""
    (tmp_path / "etc").mkdir()
    for argv in (["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)],
                 ["systemd-tmpfiles", "--create", f"--root={tmp_path}", str(TMPFILES)]):
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and "ignoring" not in res.stderr, res.stderr
    passwd = {line.split(":")[0]: line.split(":") for line in
              (tmp_path / "etc" / "passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in
              (tmp_path / "etc" / "group").read_text().splitlines()}
    _, _, uid, gid, _, home, shell = passwd["modcam"]
    assert int(uid) < 1000 and gid == groups["modcam"][2]       # a system user
    assert (home, shell) == ("/var/lib/modcam", "/usr/sbin/nologin")
    assert int(groups["camera"][2]) < 1000
    service = unit_settings()
    user, group = setting(service, "User"), setting(service, "Group")
    mode = int(setting(service, "StateDirectoryMode"), 8)
    for name in setting(service, "StateDirectory").split():
        st = (tmp_path / "var" / "lib" / name).stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == \
            (int(passwd[user][2]), int(groups[group][2]), mode), name


def test_the_other_seccomp_settings_refuse_nothing_more():
    groups = syscall_groups()
    allowed = allowed_syscalls(unit_settings(), groups)
    refused_elsewhere = (expand("@clock", groups) | expand("@module", groups)
                         | {"syslog", "_sysctl", "sethostname", "setdomainname"})
    assert not refused_elsewhere & allowed


# --- the seccomp sandbox ----------------------------------------------------------

@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> list[str]:
    """The argv prefix that runs a command inside the unit's seccomp filters."""
    spec = tmp_path_factory.mktemp("seccomp") / "filters.json"
    spec.write_text(json.dumps(sandbox_filters(unit_settings(), syscall_groups())))
    return [sys.executable, str(Path(__file__).resolve()), "--seccomp-exec", str(spec), "--"]


# One probe per kind of rule: the answer unfiltered, and inside the sandbox.
PROBE = r"""
import ctypes, errno, json, mmap, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
number = ctypes.CDLL("libseccomp.so.2").seccomp_syscall_resolve_name
path = os.path.join(sys.argv[1], "probe-file")
open(path, "w").close()

def call(name, *args):
    rc = libc.syscall(ctypes.c_long(number(name.encode())), *(ctypes.c_long(a) for a in args))
    return errno.errorcode[ctypes.get_errno()] if rc < 0 else "ok"

def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc))
    except MemoryError:
        return "MemoryError"

def cffi_callback():
    import cffi
    ffi = cffi.FFI()
    return ffi.callback("int(int)", lambda x: x + 1)(1) == 2

out = {
    "ptrace": call("ptrace", 2, 2**22 + 7, 0, 0),     # PTRACE_PEEKDATA, no such pid
    "sched_setaffinity": attempt(lambda: os.sched_setaffinity(0, os.sched_getaffinity(0))),
    "reboot": call("reboot", 0, 0, 0, 0),              # bad magic: harmless unfiltered
    "socket_inet": attempt(lambda: socket.socket(socket.AF_INET).close()),
    "socket_unix": attempt(lambda: socket.socket(socket.AF_UNIX).close()),
    "socket_netlink": attempt(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW,
                                                    15).close()),     # NETLINK_KOBJECT_UEVENT
    "mmap_wx": attempt(lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE
                                                           | mmap.PROT_EXEC).close()),
    "clone3": call("clone3", 0, 0),                    # no arguments: EINVAL unfiltered
    "openat2": call("openat2", -100, 0, 0, 0),         # no arguments: EINVAL unfiltered
    "chmod_suid": attempt(lambda: os.chmod(path, 0o4755)),
    "cffi_callback": attempt(cffi_callback),
}
print(json.dumps(out))
"""


def run_probe(prefix: list[str], directory: Path) -> dict:
    directory.mkdir()
    res = subprocess.run([*prefix, sys.executable, "-c", PROBE, str(directory)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_the_sandbox_refuses_what_the_unit_refuses(sandbox, tmp_path):
    plain, boxed = run_probe([], tmp_path / "plain"), run_probe(sandbox, tmp_path / "boxed")
    # reboot() with a bad magic number: EINVAL, or EPERM without CAP_SYS_BOOT.
    assert plain.pop("reboot") in ("EINVAL", "EPERM")
    assert plain == {
        "ptrace": "ESRCH", "sched_setaffinity": "ok", "socket_inet": "ok", "socket_unix": "ok",
        "socket_netlink": "ok", "mmap_wx": "ok", "clone3": "EINVAL", "openat2": "EINVAL",
        "chmod_suid": "ok", "cffi_callback": "ok"}
    assert boxed == {
        "ptrace": "EPERM",                   # @debug is not in the set
        "sched_setaffinity": "EPERM",        # ~@resources
        "reboot": "EPERM",                   # @reboot is not in the set
        "socket_inet": "EAFNOSUPPORT",       # RestrictAddressFamilies=
        "socket_unix": "ok", "socket_netlink": "ok",
        "mmap_wx": "EPERM",                  # MemoryDenyWriteExecute=
        "clone3": "ENOSYS",                  # RestrictNamespaces=: glibc falls back to clone()
        "openat2": "ENOSYS",                 # RestrictSUIDSGID=: callers fall back to openat()
        "chmod_suid": "EPERM",               # RestrictSUIDSGID=
        "cffi_callback": "MemoryError",      # why modcam's cffi code has no ffi.callback()
    }


def test_no_cffi_callback_anywhere_in_the_daemon():
    # The sandboxed run below only covers the paths it takes: MemoryDenyWriteExecute=
    # would break an ffi.callback() on any other path too (@ffi.def_extern works).
    offenders = [str(path.relative_to(REPO)) for path in (REPO / "daemon" / "modcam").rglob("*.py")
                 if "ffi.callback(" in path.read_text()]
    assert not offenders


class SandboxedModcamd:
    """modcamd as tests/support/daemon.py's ModcamdProcess runs it, but through
    the sandbox prefix; the same interface (proc, log, stop)."""

    def __init__(self, prefix, bed, bus_address: str, capture_dir: str, env_extra: dict):
        argv = [*prefix, sys.executable, "-m", "modcam.service", "--bus", bus_address,
                "--capture-dir", capture_dir, "--log-level", "debug"]
        self.proc = subprocess.Popen(argv, env=bed.env(env_extra), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self._lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self._lines.extend(self.proc.stderr),
                                        daemon=True)
        self._reader.start()

    @property
    def log(self) -> str:
        return "".join(self._lines)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode


class NotifyListener:
    """A $NOTIFY_SOCKET that keeps being drained (modcam/journal.py: an
    undrained one would block the daemon)."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self._stop = False
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                pass

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def seccomp_status(pid: int) -> dict:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return {k: fields[k].strip() for k in ("NoNewPrivs", "Seccomp", "Seccomp_filters")}


def test_modcamd_plugs_captures_and_stops_inside_the_sandbox(daemon_harness, sandbox, tmp_path):
    from gi.repository import GLib
    from PIL import Image

    from modcam import names

    h = daemon_harness
    notify = NotifyListener(tmp_path / "notify")
    try:
        h.daemon = SandboxedModcamd(sandbox, h.bed, h.bus_address, h.capture_dir,
                                    {"NOTIFY_SOCKET": str(tmp_path / "notify"),
                                     "WATCHDOG_USEC": "400000"})
        h.wait_owned()
        # The daemon itself is the filtered process (the wrapper exec'd into it).
        status = seccomp_status(h.daemon.proc.pid)
        assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
        assert int(status["Seccomp_filters"]) >= len(sandbox_filters(unit_settings(),
                                                                     syscall_groups()))
        c = h.client
        # udev uevent in, control socket, memfd ring over SCM_RIGHTS, eventfd, numpy ISP on
        # worker threads, libjpeg through cffi, DNG and PNG writers, files linked into place.
        vm = h.plug("MC0901")
        formats = GLib.Variant("as", ["jpeg", "png", "dng"])
        res = c.module("Capture", vm.path, [{"formats": formats}], "a{sv}")
        assert [Path(p).suffix for p in res["paths"]] == [".jpg", ".png", ".dng"]
        assert Image.open(res["paths"][0]).size == Image.open(res["paths"][1]).size == (1152, 864)
        # A file descriptor passed in by the caller.
        with open(tmp_path / "shot.jpg", "w+b") as f:
            out = c.call(vm.path, names.MODULE_INTERFACE, "CaptureToFd",
                         [0, {"format": GLib.Variant("s", "jpeg")}], "ha{sv}", fds=[f.fileno()])
        assert out["size"] == (tmp_path / "shot.jpg").stat().st_size > 0
        assert Image.open(tmp_path / "shot.jpg").size == (1152, 864)
        mark = len(c.signals)
        vm.unplug()
        c.wait_signal("ModuleRemoved", after=mark)
        assert h.daemon.stop() == 0
    finally:
        notify.close()
    text = "\n".join(notify.messages)
    assert "READY=1" in text and "WATCHDOG=1" in text and "STOPPING=1" in text
    # Nothing refused on the way was fatal or even worth a warning.
    bad = [line for line in h.daemon.log.splitlines()
           if re.search(r"CRITICAL|ERROR|WARNING|Traceback|Operation not permitted", line)
           and "camera group" not in line]
    assert not bad, h.daemon.log
