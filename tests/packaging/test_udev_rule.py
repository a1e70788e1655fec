"""packaging/udev/70-modcam.rules, run by udev itself against the virtual
module's udev device.

`udevadm test` parses the rules, matches them against a device and prints
the properties and tags the event would leave.  It reads the device from
/sys, which under the umockdev preload is the testbed's, and its rules only
from the system's rules directories.  So each run happens in a private mount
namespace (`unshare --mount`) where those directories are empty tmpfs
mounts holding only our rule, /etc/group gains the camera group if the
machine lacks it (udev resolves GROUP= names when it parses), /run is a
tmpfs (udevadm writes its database there) and /dev and /sys are read-only
(it would link device nodes in /dev).  Nothing outside the namespace changes.
"""
from __future__ import annotations

import grp
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from modcam import names

REPO = Path(__file__).resolve().parents[2]
RULE = REPO / "packaging" / "udev" / "70-modcam.rules"
UNIT_NAME = "modcamd.service"
GROUP = "camera"

# Runs inside the private mount namespace; $1 action, $2 syspath, $3 rule, $4 group file.
NAMESPACE_SCRIPT = r"""
set -e
mount -t tmpfs tmpfs /run
mount --bind /dev /dev && mount -o remount,bind,ro /dev
mount --bind /sys /sys && mount -o remount,bind,ro /sys
for dir in /etc/udev/rules.d /usr/lib/udev/rules.d /usr/local/lib/udev/rules.d /lib/udev/rules.d; do
    if [ -d "$dir" ]; then mount -t tmpfs tmpfs "$dir"; fi
done
mkdir -p /run/udev/rules.d
cp "$3" /run/udev/rules.d/
mount --bind "$4" /etc/group
exec udevadm test --action="$1" "$2"
"""


def camera_gid_and_group_file(tmp_path: Path) -> tuple[int, Path]:
    """The camera group's gid, and an /etc/group that has it."""
    text = Path("/etc/group").read_text()
    try:
        gid = grp.getgrnam(GROUP).gr_gid
    except KeyError:
        used = {int(line.split(":")[2]) for line in text.splitlines() if line.count(":") >= 3}
        gid = next(g for g in range(999, 100, -1) if g not in used)
        text += f"{GROUP}:x:{gid}:\n"
    path = tmp_path / "group"
    path.write_text(text)
    return gid, path


class UdevRun:
    def __init__(self, res: subprocess.CompletedProcess):
        assert res.returncode == 0, res.stdout + res.stderr
        self.properties = dict(line.split("=", 1) for line in res.stdout.splitlines()
                               if re.match(r"[A-Z][A-Z0-9_]*=", line))
        self.log = res.stderr
        # What udev said about our file: the tokens it applied, or complaints.
        self.rule_lines = [line for line in res.stderr.splitlines() if f"{RULE.name}:" in line]

    @property
    def tags(self) -> set[str]:
        return set(filter(None, self.properties.get("TAGS", "").split(":")))


def udevadm_test(bed, sys_path: str, action: str, tmp_path: Path) -> UdevRun:
    assert os.geteuid() == 0, "udevadm test runs in a private mount namespace: needs root"
    assert shutil.which("udevadm"), "udevadm is missing (Debian package udev)"
    _gid, group_file = camera_gid_and_group_file(tmp_path)
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                          NAMESPACE_SCRIPT, "sh", action, sys_path, str(RULE), str(group_file)],
                         env=bed.env(), capture_output=True, text=True, timeout=60)
    return UdevRun(res)


def assert_udev_accepted_the_rule(run: UdevRun) -> None:
    # Parse errors and ignored keys are logged as "<file>:<line> <complaint>".
    complaints = [line for line in run.rule_lines
                  if not re.search(r"70-modcam\.rules:\d+ (GROUP|MODE) ", line)]
    assert not complaints, run.log


@pytest.mark.parametrize("action", ["add", "change"])
def test_a_plugged_module_is_tagged_for_systemd_and_wants_modcamd(udev_bed, tmp_path, action):
    sys_path = udev_bed.plug("MC0801")
    run = udevadm_test(udev_bed, sys_path, action, tmp_path)
    assert_udev_accepted_the_rule(run)
    assert run.properties[names.PROP_SERIAL] == "MC0801"      # it did read the testbed device
    assert "systemd" in run.tags
    assert run.properties.get("SYSTEMD_WANTS") == UNIT_NAME


def test_a_module_node_goes_to_the_camera_group(udev_bed, tmp_path):
    # Today's modules have no device node; a driver that gives one gets it
    # owned by the camera group, mode 0660.
    sys_path = udev_bed.plug("MC0802", extra_properties={"DEVNAME": "modcam0", "MAJOR": "511",
                                                          "MINOR": "0"})
    run = udevadm_test(udev_bed, sys_path, "add", tmp_path)
    gid, _ = camera_gid_and_group_file(tmp_path)
    assert_udev_accepted_the_rule(run)
    applied = [line.split(f"{RULE.name}:", 1)[1] for line in run.rule_lines]
    assert [a.split(" ", 1)[1] for a in applied] == [f"GROUP {gid}", "MODE 0660"], run.log
    assert run.properties.get("SYSTEMD_WANTS") == UNIT_NAME


def test_removal_and_other_devices_are_left_alone(udev_bed, tmp_path):
    sys_path = udev_bed.plug("MC0803")
    removed = udevadm_test(udev_bed, sys_path, "remove", tmp_path)
    assert "SYSTEMD_WANTS" not in removed.properties and "systemd" not in removed.tags
    # Same subsystem, but not a module.
    udev_bed.bed.change("MC0803", properties={names.PROP_MODULE: "0"})
    other = udevadm_test(udev_bed, sys_path, "add", tmp_path)
    assert other.properties[names.PROP_MODULE] == "0"
    assert "SYSTEMD_WANTS" not in other.properties and "systemd" not in other.tags


def test_the_rule_names_what_the_rest_of_the_package_defines():
    text = RULE.read_text()
    assert f'SUBSYSTEM!="{names.UDEV_SUBSYSTEM}"' in text
    assert f'ENV{{{names.PROP_MODULE}}}!="1"' in text
    assert (REPO / "packaging" / "systemd" / UNIT_NAME).is_file()
    sysusers = (REPO / "packaging" / "sysusers.d" / "modcam.conf").read_text()
    assert re.search(rf"^g {GROUP}\b", sysusers, re.M)
