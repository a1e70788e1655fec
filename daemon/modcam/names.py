"""Names shared by the daemon, the virtual module and the tests.

This module owns the *spelling* of everything that crosses a process
boundary and is not D-Bus: the udev identity of a modcam module (subsystem,
devtype, sysfs attribute names, udev property names) and the protocol
version advertised there.  docs/udev-interface.md explains what each one means;
the two must stay in step.  Like the D-Bus names, these change only by adding.
"""

# --- udev identity ----------------------------------------------------------
# A module is not a V4L2 device (no /dev/video node: frames arrive over the
# ring, not through V4L2 buffers), so it gets a subsystem (a device class) of
# its own.  The daemon filters its udev monitor on this subsystem/devtype.
UDEV_SUBSYSTEM = "modcam"
UDEV_DEVTYPE = "camera-module"
# Kernel name prefix: modules appear as modcam0, modcam1, ... like other
# class devices (the lowest free index is reused, as the kernel's IDA does).
UDEV_NAME_PREFIX = "modcam"

# sysfs attributes (files in the device's sysfs directory).  Attributes are
# read live from sysfs, so they are gone once a module is unplugged: on a
# "remove" event use the properties below, never these.
ATTR_SERIAL = "serial"
ATTR_VENDOR = "vendor"
ATTR_MODEL = "model"
ATTR_FIRMWARE = "firmware_version"
ATTRIBUTES = (ATTR_SERIAL, ATTR_VENDOR, ATTR_MODEL, ATTR_FIRMWARE)

# udev properties (carried inside every uevent, including "remove").
PROP_MODULE = "MODCAM_MODULE"          # "1": this device is a modcam module
PROP_SERIAL = "MODCAM_SERIAL"          # module serial, same as ATTR_SERIAL
PROP_CONTROL = "MODCAM_CONTROL"        # absolute path of the control socket
PROP_PROTOCOL = "MODCAM_PROTOCOL"      # control protocol version, decimal
PROP_ID_VENDOR = "ID_VENDOR"           # conventional udev names, for tools
PROP_ID_MODEL = "ID_MODEL"
PROP_ID_REVISION = "ID_REVISION"       # firmware version, for tools

# Version of the control protocol spoken on MODCAM_CONTROL.  A daemon ignores
# (and logs) a module whose MODCAM_PROTOCOL it does not know.
PROTOCOL_VERSION = 1

# --- D-Bus ------------------------------------------------------------------
# The contract is dbus/*.xml (one file per interface, a <doc> on every member);
# these are its names. Versioned: change only by adding.
BUS_NAME = "org.modcam.Camera1"
MANAGER_PATH = "/org/modcam/Camera1"
MODULES_PATH = "/org/modcam/Camera1/modules"   # + "/" + object id from the serial
MANAGER_INTERFACE = "org.modcam.Camera1.Manager"
MODULE_INTERFACE = "org.modcam.Camera1.Module"
ERROR_PREFIX = "org.modcam.Camera1.Error."
ERRORS = ("NotReady", "Removed", "Busy", "InvalidArgument", "PermissionDenied", "Timeout",
          "Failed")
