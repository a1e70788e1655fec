"""The physical model as the virtual module's frame source.

Adapts virtual/render.py (scene -> lens -> sensor, in strips) to the
streamer's FrameSource interface (FrameSettings in, RAW12 packed rows out).

Speed. Rendering the noise-free image of one optical setting takes seconds at
100 MP and adding fresh noise ~0.13 s per full frame, while the link carries
a full frame every 0.12 s. So each setting gets a bank of `bank_size` noisy
frames, rendered and packed on first use, then only copied into the ring:
frame n of a stream is bank frame n mod bank_size. What is approximated: the
noise repeats with that period (it is independent between bank frames);
everything else — signal, optics, shading, defects — is exact per frame.
Memory: bank_size x 150 MB at full readout, plus the renderer's caches.
"""
from __future__ import annotations

import collections
import threading

import numpy as np

from modcam import raw12
from modcam.virtual.render import Renderer, RenderSettings
from modcam.virtual.scene import SCENES, make_scene

STRIP_ROWS = 256


class _Bank:
    def __init__(self, source, settings, size: int):
        self.source = source          # render.FrameSource: noisy frames of one setting
        self.frames: list[np.ndarray | None] = [None] * size
        self.height, self.stride = settings.height, settings.stride


class PhysicalSource:
    """FrameSource that renders the modelled scene through the modelled lens and sensor."""

    scenes = tuple(SCENES)

    def __init__(self, serial: str, bank_size: int = 4, max_settings: int = 2, seed: int = 0):
        self.serial, self.bank_size, self.seed = serial, max(1, bank_size), seed
        self._max_settings = max(1, max_settings)
        self._banks: collections.OrderedDict = collections.OrderedDict()
        self._renderers: dict = {}
        self._lock = threading.Lock()   # the streamer thread and stills may both ask

    def packed_frame(self, settings, sequence: int) -> np.ndarray:
        with self._lock:
            bank = self._bank(settings)
            i = sequence % self.bank_size
            if bank.frames[i] is None:
                bank.frames[i] = self._render(bank, i)
            return bank.frames[i]

    def _renderer(self, settings) -> Renderer:
        key = (settings.scene, settings.scene_seed, settings.scene_distance_m)
        if key not in self._renderers:
            self._renderers.clear()   # one scene at a time: its caches are large
            scene = make_scene(settings.scene, seed=settings.scene_seed,
                               distance_m=settings.scene_distance_m)
            self._renderers[key] = Renderer(scene, self.serial)
        return self._renderers[key]

    def _bank(self, settings) -> _Bank:
        bank = self._banks.get(settings)
        if bank is None:
            while len(self._banks) >= self._max_settings:  # free before allocating anew
                self._banks.popitem(last=False)
            renderer = self._renderer(settings)
            rs = RenderSettings(mode=settings.readout_mode, exposure_us=settings.exposure_us,
                                gain=settings.analogue_gain, f_number=settings.aperture,
                                lens_position=settings.lens_position,
                                illuminant=settings.illuminant, lux=settings.lux)
            bank = self._banks[settings] = _Bank(renderer.frame_source(rs, self.seed),
                                                 settings, self.bank_size)
        self._banks.move_to_end(settings)
        return bank

    def _render(self, bank: _Bank, index: int) -> np.ndarray:
        """Bank frame `index`, rendered and packed strip by strip (bounded memory)."""
        packed = np.empty((bank.height, bank.stride), np.uint8)
        width = bank.stride * 2 // 3
        strip = np.empty((STRIP_ROWS, width), np.uint16)
        for r0 in range(0, bank.height, STRIP_ROWS):
            r1 = min(bank.height, r0 + STRIP_ROWS)
            rows = strip[:r1 - r0]
            bank.source.frame(index, out=rows, rows=(r0, r1))
            raw12.pack(rows, out=packed[r0:r1])
        return packed
