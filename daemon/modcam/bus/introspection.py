"""The D-Bus contract as the daemon loads it: dbus/<interface>.xml.

The files in dbus/ are the single source of truth; the daemon registers its
objects from them, so what callers introspect is exactly what is documented
(a test compares live introspection with the files). Looked up in order:
$MODCAM_DBUS_DIR, the checkout's dbus/ next to daemon/, then the installed
copies under <prefix>/share/dbus-1/interfaces.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from gi.repository import Gio

_CHECKOUT = Path(__file__).resolve().parents[3] / "dbus"

# The standard interface modcamd also implements on its root object; its
# definition is freedesktop's, not ours, so it lives here rather than in dbus/.
OBJECT_MANAGER_XML = """<node>
  <interface name="org.freedesktop.DBus.ObjectManager">
    <method name="GetManagedObjects">
      <arg name="objects" type="a{oa{sa{sv}}}" direction="out"/>
    </method>
    <signal name="InterfacesAdded">
      <arg name="object" type="o"/>
      <arg name="interfaces" type="a{sa{sv}}"/>
    </signal>
    <signal name="InterfacesRemoved">
      <arg name="object" type="o"/>
      <arg name="interfaces" type="as"/>
    </signal>
  </interface>
</node>"""
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"


def search_path() -> list[Path]:
    dirs = []
    if os.environ.get("MODCAM_DBUS_DIR"):
        dirs.append(Path(os.environ["MODCAM_DBUS_DIR"]))
    dirs += [_CHECKOUT, Path(sys.prefix) / "share/dbus-1/interfaces",
             Path("/usr/share/dbus-1/interfaces")]
    return dirs


def xml_path(interface: str) -> Path:
    for d in search_path():
        path = d / f"{interface}.xml"
        if path.is_file():
            return path
    raise FileNotFoundError(f"the D-Bus interface file {interface}.xml is in none of "
                            f"{', '.join(map(str, search_path()))}")


@functools.lru_cache(maxsize=None)
def interface_info(interface: str) -> Gio.DBusInterfaceInfo:
    """The parsed interface (cached: GDBus keeps pointers into it while registered)."""
    if interface == OBJECT_MANAGER:
        node = Gio.DBusNodeInfo.new_for_xml(OBJECT_MANAGER_XML)
    else:
        node = Gio.DBusNodeInfo.new_for_xml(xml_path(interface).read_text(encoding="utf-8"))
    info = node.lookup_interface(interface)
    if info is None:
        raise ValueError(f"{interface}.xml does not define the interface {interface}")
    info.cache_build()
    return info
