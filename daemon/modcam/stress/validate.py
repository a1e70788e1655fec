"""Is a captured DNG exactly the frame the capture result says it is?

The virtual module's synthetic source writes the frame's sequence number
into the first 8 bytes of packed row 0 and is otherwise a pure function of
the frame settings. So a DNG is valid when (1) its row 0, packed again as
RAW12, starts with the result's `sequence`, and (2) every other pixel equals
the reference frame of those settings, rendered by SyntheticSource from the
result's metadata and the module's scene (the module renders from the
float32 values its frame header carries, so the two agree to the bit).
Anything else is a torn or mixed frame.
"""
from __future__ import annotations

import hashlib
import threading

import numpy as np

from modcam import raw12
from modcam.isp.dng_reader import DngError, read_dng
from modcam.virtual.streamer import FrameSettings, SyntheticSource

# The virtual module's scene and light at start (virtual/module.py); the lab never changes them.
SCENE = {"scene": "studio", "scene_distance_m": 1.2, "scene_seed": 0, "lux": 1000.0,
         "illuminant": "D65"}
MASKED_PIXELS = 6          # 8 bytes of RAW12 = 5 1/3 pixels carry the sequence


def _digest(cfa: np.ndarray) -> str:
    masked = cfa.copy()
    masked[0, :MASKED_PIXELS] = 0
    return hashlib.sha256(masked.tobytes()).hexdigest()


def _f32(value) -> float:
    return float(np.float32(value))


def settings_of(result: dict) -> FrameSettings:
    """The settings the module rendered the frame with: its header's, whose
    real values are float32."""
    w, h = int(result["width"]), int(result["height"])
    return FrameSettings(result["readout_mode"], w, h, 3 * w // 2, int(result["exposure_time"]),
                         _f32(result["analogue_gain"]), _f32(result["aperture"]),
                         _f32(result["lens_position"]), SCENE["scene"],
                         SCENE["scene_distance_m"], SCENE["scene_seed"], SCENE["lux"],
                         SCENE["illuminant"])


def settings_key(result: dict) -> tuple:
    return (result["readout_mode"], int(result["width"]), int(result["height"]),
            int(result["exposure_time"]), round(float(result["analogue_gain"]), 4),
            round(float(result["aperture"]), 3), round(float(result["lens_position"]), 4))


class Validator:
    """Thread-safe: the client threads share one."""

    def __init__(self):
        self._lock = threading.Lock()
        self._rendered: dict[FrameSettings, str] = {}
        self.by = {"rendered": 0}

    def _rendered_digest(self, settings: FrameSettings) -> str:
        with self._lock:
            digest = self._rendered.get(settings)
        if digest is None:
            packed = SyntheticSource.render(settings)
            digest = _digest(raw12.unpack(packed, settings.width))
            with self._lock:
                if len(self._rendered) > 256:
                    self._rendered.clear()
                self._rendered[settings] = digest
        return digest

    def check(self, path: str, result: dict) -> str | None:
        """None if the DNG is the frame `result` names; else why not."""
        try:
            cfa = read_dng(path).cfa
        except DngError as exc:
            return f"unreadable DNG: {exc}"
        if cfa.shape != (int(result["height"]), int(result["width"])):
            return f"DNG is {cfa.shape[1]}x{cfa.shape[0]}, the result says " \
                   f"{result['width']}x{result['height']}"
        row0 = raw12.pack(np.ascontiguousarray(cfa[0:1]))
        sequence = int.from_bytes(bytes(row0[0, :8]), "little")
        if sequence != int(result["sequence"]):
            return f"row 0 carries sequence {sequence}, the result says {result['sequence']}"
        digest = _digest(cfa)
        if digest == self._rendered_digest(settings_of(result)):
            with self._lock:
                self.by["rendered"] += 1
            return None
        return (f"pixels differ from the reference frame of {settings_key(result)} "
                f"(torn or mixed frame)")
