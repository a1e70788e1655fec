"""dbus/*.xml is the D-Bus contract of DESIGN.md: valid introspection data,
named as modcam.names says, every member documented, every method listing
only the documented error names, and every contracted member present."""
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from gi.repository import Gio

from modcam import names

DBUS = Path(__file__).resolve().parents[2] / "dbus"
DOC = "{http://www.freedesktop.org/dbus/1.0/doc.dtd}"
CONTRACT = {
    names.MANAGER_INTERFACE: {"methods": {"GetModules": ""}, "signals": {"ModuleAdded", "ModuleRemoved"},
                              "properties": {"Modules": "ao", "Version": "s"}},
    names.MODULE_INTERFACE: {
        "methods": {"Claim": "", "Release": "", "SetControls": "a{sv}", "AutoFocus": "",
                    "Capture": "a{sv}", "CaptureToFd": "ha{sv}"},
        "signals": set(),
        "properties": {"Serial": "s", "Model": "s", "Firmware": "s", "State": "s",
                       "Sensor": "a{sv}", "Lens": "a{sv}", "ReadoutMode": "s", "FocusMode": "s",
                       "LensPosition": "d", "Aperture": "d", "ExposureTime": "i",
                       "AnalogueGain": "d", "AeEnable": "b", "AwbEnable": "b",
                       "ColourGains": "ad", "Temperature": "d", "PowerDraw": "u",
                       "IdleTimeout": "u", "Clients": "as", "FramesReceived": "t",
                       "FramesDropped": "t", "FramesCorrupt": "t"}},
}


def interface_file(name):
    return DBUS / f"{name}.xml"


@pytest.mark.parametrize("name", CONTRACT)
def test_introspection_is_valid_and_holds_the_contract(name):
    node = Gio.DBusNodeInfo.new_for_xml(interface_file(name).read_text())
    [iface] = node.interfaces
    assert iface.name == name
    want = CONTRACT[name]
    methods = {m.name: "".join(a.signature for a in m.in_args) for m in iface.methods}
    assert methods == want["methods"]
    assert {s.name for s in iface.signals} == want["signals"]
    props = {p.name: p.signature for p in iface.properties}
    assert want["properties"].items() <= props.items()


@pytest.mark.parametrize("name", CONTRACT)
def test_every_member_is_documented_and_errors_are_the_documented_ones(name):
    iface = ET.parse(interface_file(name)).getroot().find("interface")
    assert iface.find(f"{DOC}doc/{DOC}summary") is not None
    for member in iface:
        if member.tag not in ("method", "signal", "property"):
            continue
        summary = member.find(f"{DOC}doc/{DOC}summary")
        assert summary is not None and summary.text.strip(), f"{member.get('name')} has no doc"
        if member.tag == "method":
            text = ET.tostring(member, encoding="unicode")
            assert "Errors:" in text, f"{member.get('name')} does not list its errors"
            used = set(re.findall(re.escape(names.ERROR_PREFIX) + r"(\w+)", text))
            assert used <= set(names.ERRORS), used - set(names.ERRORS)
