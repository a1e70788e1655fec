"""The daemon's errors: one class per documented D-Bus error, each a sentence.

The D-Bus contract (dbus/*.xml, DESIGN.md) names exactly seven errors,
org.modcam.Camera1.Error.{NotReady, Removed, Busy, InvalidArgument,
PermissionDenied, Timeout, Failed}. Each class here carries one of those
names; `dbus_error()` turns any exception into (name, message) so that only
documented names, and never a traceback, cross the bus: an unexpected
exception becomes Failed with a plain sentence (the details go to the log).
"""
from __future__ import annotations

from modcam import names

__all__ = ["ModcamError", "NotReady", "Removed", "Busy", "InvalidArgument",
           "PermissionDenied", "Timeout", "Failed", "dbus_error"]


class ModcamError(Exception):
    """Base class: `str(error)` is the human sentence sent with the error."""

    dbus_suffix = "Failed"

    @property
    def dbus_name(self) -> str:
        return names.ERROR_PREFIX + self.dbus_suffix


class NotReady(ModcamError):
    """The module's state does not allow the request (the message names the state)."""
    dbus_suffix = "NotReady"


class Removed(ModcamError):
    """The module was pulled off; the call cannot complete."""
    dbus_suffix = "Removed"


class Busy(ModcamError):
    """Another operation holds the module (a capture or an autofocus cycle)."""
    dbus_suffix = "Busy"


class InvalidArgument(ModcamError, ValueError):
    """A bad argument; the message names the key and what was expected."""
    dbus_suffix = "InvalidArgument"


class PermissionDenied(ModcamError):
    """The caller may not do this."""
    dbus_suffix = "PermissionDenied"


class Timeout(ModcamError):
    """The module did not answer in time (boot, frame, still)."""
    dbus_suffix = "Timeout"


class Failed(ModcamError):
    """The operation failed for a reason the message gives (a full disk, a bad calibration)."""
    dbus_suffix = "Failed"


def dbus_error(exc: BaseException) -> tuple[str, str]:
    """(D-Bus error name, sentence) for any exception raised by a handler."""
    if isinstance(exc, ModcamError):
        return exc.dbus_name, str(exc) or type(exc).__doc__.strip()
    if isinstance(exc, OSError) and exc.strerror:
        return Failed().dbus_name, f"the operation failed: {exc.strerror.lower()}"
    return Failed().dbus_name, "the operation failed inside modcamd; its journal has the details"
