"""Who may operate a camera: root, the daemon's own user, and members of the
camera group. Everyone may look (introspect, read properties).

The bus policy (dbus/org.modcam.Camera1.conf) already refuses the other
callers on the system bus; this check is the same rule inside the daemon,
so a bus without our policy (a session bus, a misinstalled policy) does not
open the camera to every process. The caller's uid and groups come from the
bus (GetConnectionCredentials: the kernel's view, not the caller's word),
asked once per unique name, without blocking the loop.
"""
from __future__ import annotations

import grp
import logging
import os

from gi.repository import Gio, GLib

from modcam.errors import PermissionDenied
from modcam.pending import Pending

log = logging.getLogger("modcam.access")


class Access:
    def __init__(self, connection: Gio.DBusConnection, group: str):
        self.connection = connection
        self.group = group
        try:
            self.gid = grp.getgrnam(group).gr_gid if group else None
        except KeyError:
            log.warning("the camera group %r does not exist: only root and uid %d may operate "
                        "cameras", group, os.getuid())
            self.gid = None
        self._verdicts: dict[str, Pending] = {}

    def forget(self, name: str) -> None:
        self._verdicts.pop(name, None)

    def check(self, sender: str, what: str) -> Pending:
        """Resolves if `sender` may operate a camera; PermissionDenied otherwise."""
        if not sender:       # a peer-to-peer connection: nobody else is on it
            return Pending.resolved(None)
        verdict = self._verdicts.get(sender)
        if verdict is None:
            verdict = self._verdicts[sender] = self._ask(sender)
        return verdict.then(lambda allowed: None if allowed else _deny(sender, what))

    def _ask(self, sender: str) -> Pending:
        p = Pending(f"credentials of {sender}")

        def done(conn, res):
            try:
                creds = conn.call_finish(res).unpack()[0]
            except GLib.Error as exc:
                self._verdicts.pop(sender, None)
                p.reject(PermissionDenied(f"cannot tell who {sender} is: {exc.message}"))
                return
            uid = creds.get("UnixUserID")
            groups = set(creds.get("UnixGroupIDs") or ())
            p.resolve(uid in (0, os.getuid()) or (self.gid is not None and self.gid in groups))
        self.connection.call("org.freedesktop.DBus", "/org/freedesktop/DBus",
                             "org.freedesktop.DBus", "GetConnectionCredentials",
                             GLib.Variant("(s)", (sender,)), GLib.VariantType("(a{sv})"),
                             Gio.DBusCallFlags.NONE, 5000, None, done)
        return p


def _deny(sender: str, what: str):
    raise PermissionDenied(f"{what} is only allowed to root and members of the camera group; "
                           f"{sender} is neither")
