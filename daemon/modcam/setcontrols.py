"""SetControls: check the whole request, then apply it where it belongs.

Module-side controls (exposure, gain, aperture, lens, readout mode) go to the
module when it is powered; when it is off or booting they are kept and
applied as it becomes ready (no boot just to store a value). Daemon-side
ones (AeEnable, AwbEnable, ColourGains, AfMode) only change our settings.
All or nothing: nothing is applied unless every key checks out and, when
the module is asked, it accepts them.
"""
from __future__ import annotations

from modcam import controls as ctl
from modcam.errors import Busy, Removed
from modcam.pending import Pending


def set_controls(m, values: dict):
    if m.removed:
        raise Removed(f"module {m.serial} was removed")
    parsed = ctl.implied(ctl.parse(values, m.limits, m.settings["AfMode"]))
    if m.busy is not None:
        raise Busy(f"module {m.serial} is busy: {m.busy} in progress; controls cannot change "
                   "until it ends")

    def apply(_=None) -> None:
        m.settings.update(parsed)
        m.changed()

    module_side = ctl.module_args(parsed)
    if module_side and m.pump is not None and m.channel is not None \
            and m.state in ("ready", "streaming"):
        return m.track(m.request("set_controls", **module_side).then(m._controls_applied)
                       .then(apply))
    apply()
    return Pending.resolved(None)
