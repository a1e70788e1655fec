"""The daemon's plain-Python pieces: controls, claims, pending results."""
import pytest

from modcam import controls as ctl
from modcam.claims import Claims
from modcam.errors import InvalidArgument, Removed
from modcam.pending import Pending

LIMITS = ctl.Limits.from_identify({"lens": {"f_number_min": 1.4, "f_number_max": 11.0,
                                            "lens_position_max": 3.333},
                                   "readout_modes": {"full": {}, "binned": {}, "zoom2x": {}}})


def test_controls_parse_and_map_to_the_module_protocol():
    c = ctl.parse({"ExposureTime": 5000, "AnalogueGain": 2, "Aperture": 4.0,
                   "ReadoutMode": "binned", "AwbEnable": False}, LIMITS)
    assert c == {"ExposureTime": 5000, "AnalogueGain": 2.0, "Aperture": 4.0,
                 "ReadoutMode": "binned", "AwbEnable": False}
    assert ctl.module_args(c) == {"exposure_us": 5000, "analogue_gain": 2.0, "aperture": 4.0,
                                  "readout_mode": "binned"}
    assert ctl.implied(c)["AeEnable"] is False


@pytest.mark.parametrize("values, words", [
    ({"ExposureTime": 10}, "ExposureTime 10 is below the minimum 30 µs"),
    ({"ExposureTime": 2_000_000}, "above the maximum 1e+06"),
    ({"ExposureTime": 1.5}, "ExposureTime must be an integer"),
    ({"ExposureTime": True}, "ExposureTime must be an integer"),
    ({"AnalogueGain": float("nan")}, "finite"),
    ({"Aperture": 16.0}, "Aperture 16 is above the maximum 11"),
    ({"LensPosition": -1.0}, "LensPosition -1 is below the minimum 0"),
    ({"ColourGains": [1.0]}, "ColourGains must be two numbers"),
    ({"AfMode": "macro"}, "AfMode must be one of manual, auto, continuous"),
    ({"ReadoutMode": "quad"}, "ReadoutMode must be one of full, binned, zoom2x"),
    ({"Brightness": 1.0}, "unknown control 'Brightness'"),
    ({"AeEnable": True, "ExposureTime": 100}, "cannot be set with AeEnable true"),
    ({"AwbEnable": True, "ColourGains": [2.0, 1.5]}, "cannot be set with AwbEnable true"),
])
def test_bad_controls_are_refused_with_a_sentence_naming_the_key(values, words):
    with pytest.raises(InvalidArgument) as err:
        ctl.parse(values, LIMITS)
    assert words in str(err.value)


def test_lens_position_needs_manual_focus():
    with pytest.raises(InvalidArgument, match="manual"):
        ctl.parse({"LensPosition": 1.0}, LIMITS, focus_mode="auto")
    assert ctl.parse({"LensPosition": 1.0, "AfMode": "manual"}, LIMITS, "auto")["LensPosition"] == 1.0


def test_limits_follow_the_module():
    narrow = ctl.Limits.from_identify({"lens": {"f_number_min": 2.0, "f_number_max": 8.0,
                                                "lens_position_max": 2.0}})
    with pytest.raises(InvalidArgument, match="below the minimum 2"):
        ctl.parse({"Aperture": 1.4}, narrow)
    with pytest.raises(InvalidArgument, match="above the maximum 2"):
        ctl.parse({"LensPosition": 2.5}, narrow)


def test_claims_are_counted_per_caller():
    claims = Claims()
    claims.add(":1.5")
    claims.add(":1.5")
    claims.add(":1.7")
    assert claims.holders == [":1.5", ":1.7"]
    claims.release(":1.5")
    assert claims.count(":1.5") == 1
    assert claims.drop(":1.5") == 1
    assert claims.holders == [":1.7"]
    with pytest.raises(InvalidArgument, match="holds no claim"):
        claims.release(":1.5")


def test_pending_settles_once_and_chains():
    seen = []
    p = Pending("x")
    chained = p.then(lambda v: v + 1).then(lambda v: Pending.resolved(v * 10))
    chained.add_done_callback(lambda r: seen.append((r.value, r.error)))
    assert p.resolve(1) and not p.reject(Removed("late"))
    assert seen == [(20, None)]
    q = Pending()
    out = q.then(lambda v: v)
    q.reject(Removed("gone"))
    assert isinstance(out.error, Removed)
    recovered = Pending.rejected(Removed("gone")).then(lambda v: v, lambda e: "recovered")
    assert recovered.value == "recovered"


def test_controls_put_back_are_cached_before_the_module_answers():
    """An autofocus puts the readout mode back while a capture may already
    start: the capture must see the mode the module will have, not the one it
    had, or it asks for nothing and gets a frame of the wrong mode."""
    from modcam.module_power import ModulePower

    class Host(ModulePower):                 # the module's control channel, stubbed
        def __init__(self):
            self.module_controls = {"readout_mode": "binned", "exposure_us": 8000}
            self.sent, self.adopted = [], 0

        def request(self, op, **args):
            self.sent.append((op, args))
            self.reply = Pending("set_controls")
            return self.reply

        def _adopt_module_controls(self):
            self.adopted += 1

    m = Host()
    m.put_back_controls(readout_mode="full")
    assert m.sent == [("set_controls", {"readout_mode": "full"})]
    assert m.module_controls == {"readout_mode": "full", "exposure_us": 8000}
    m.reply.resolve({"controls": {"readout_mode": "full", "exposure_us": 8000}})
    assert m.adopted == 1
