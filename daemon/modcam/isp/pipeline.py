"""The ISP pipeline core: develop() a RAW frame into an 8-bit sRGB picture, in strips.

Owns the order of the stages and the strip schedule:

    RAW12 unpack -> black level -> lens shading -> white balance   (C: isp_kernels, one pass)
    -> defective pixels: the calibration's list (median of same-colour neighbours,
       numpy on the cached strip), then dynamic detection (C, modcam_isp_dpc)
    -> demosaic (native/demosaic.c) -> colour matrix -> sRGB gamma LUT -> 8 bit (C: one pass)
    -> chroma denoise / luma unsharp mask (C: 3x3, one pass on the 8-bit strip, optional)
    -> sink (e.g. JpegWriter.write_rows) on the calling thread

Strips: output rows [r0, r1) need CFA rows [r0 - 7, r1 + 7) for the demosaic,
defect correction reads 2 rows further, the 3x3 finishing one more; each
strip computes its CFA halo itself (HALO rows), so every strip is a pure
function of the frame and strips equal the whole frame bit for bit.
The demosaic is handed a pointer to a virtual whole-frame CFA whose rows
outside the strip's buffer are never read (its contract: 7 rows, reflected
into the image, which the buffer covers).

Threads: `threads` workers compute strips (the C kernels release the GIL)
while the calling thread hands finished strips to the sink in order (the
JPEG encoder releases the GIL too). A fixed pool of threads + 2 strip slots
is reused, so memory is bounded by the slots, not the frame.

Colour: white-balanced camera RGB (gains = 1 / n, n the scene's native
white, G = 1: the DNG convention) goes through
M_wb = diag(1 / (M . n)) . M . diag(n), where M is the calibration's
native -> linear sRGB matrix: undo the gains, convert with M, then adapt the
white (M . n in linear sRGB) to D65 per sRGB primary. A neutral after white
balance stays neutral and full scale maps to (1, 1, 1) (highlights clip to
white). Under D65 (n = the unit's D65 white, M . n = (1, 1, 1)) this is
M . diag(n); under other light the adaptation happens after the matrix, not
in camera space, whose primaries are not the sRGB ones.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from modcam.isp.demosaic import METHODS, PATTERNS
from modcam.isp.options import DevelopOptions
from modcam.native import ffi, lib

__all__ = ["develop", "develop_to_jpeg", "DevelopOptions", "srgb_lut", "white_balanced_matrix"]

# CFA rows computed beyond a strip: 7 demosaic + 1 finishing + 2 dynamic
# defects + 2 listed defects (each reads same-colour rows two away).
HALO = 12
DPC_THRESHOLD = 1311   # dynamic defects: 2 % of the 16-bit CFA scale, well above noise
_CHANNELS = {"R": 0, "B": 3}
_MODES = {"full": (1.0, 0.0), "binned": (1.0, 0.0), "zoom2x": (0.5, 0.25)}  # field scale, offset
_LUT: np.ndarray | None = None


def srgb_lut() -> np.ndarray:
    """uint8[MODCAM_ISP_LUT_SIZE]: linear 0..1 in equal steps -> sRGB-encoded
    0..255 (IEC 61966-2-1), rounded. 16384 entries: a step is at most 0.2
    output codes (the 12.92 slope near black), and the table stays in L1."""
    global _LUT
    if _LUT is None:
        n = lib.MODCAM_ISP_LUT_SIZE
        v = np.arange(n, dtype=np.float64) / (n - 1)
        s = np.where(v <= 0.0031308, 12.92 * v, 1.055 * np.power(v, 1 / 2.4) - 0.055)
        _LUT = np.round(s * 255.0).astype(np.uint8)
    return _LUT


def white_balanced_matrix(matrix, wb_gains=None) -> np.ndarray:
    """M_wb (see the module docstring): for camera RGB white-balanced with
    `wb_gains` (R, G, B); None = the calibration's D65 balance."""
    m = np.asarray(matrix, np.float64)
    if wb_gains is None:
        n = np.linalg.solve(m, np.ones(3))
    else:
        n = 1.0 / np.asarray(wb_gains, np.float64)
    n = n / n[1]
    white = m @ n                       # the scene white in linear sRGB
    if not (white > 0).all():
        raise ValueError(f"white balance {tuple(wb_gains)} makes a white outside the "
                         "calibration's sRGB gamut")
    return (m * n[None, :]) / white[:, None]


class _Plan:
    """Everything fixed for one develop() call, checked and converted once."""

    def __init__(self, raw, meta, cal, opts: DevelopOptions, width, origin=None):
        if not isinstance(raw, np.ndarray) or raw.ndim != 2 or raw.dtype not in (np.uint8, np.uint16):
            raise ValueError("raw must be a 2-D numpy array: packed RAW12 uint8 (H, stride) "
                             f"or uint16 CFA (H, W), not {getattr(raw, 'shape', type(raw).__name__)}")
        if raw.strides[1] != raw.itemsize or raw.strides[0] % raw.itemsize:
            raise ValueError("each row of raw must be contiguous in memory")
        mode = getattr(meta, "readout_mode", "full")
        if mode not in _MODES:
            raise ValueError(f"readout mode {mode!r} is not one of {', '.join(_MODES)}")
        self.packed = raw.dtype == np.uint8
        self.height = raw.shape[0]
        if self.packed:
            width = width or getattr(meta, "width", None) or (
                cal.sensor_width // (1 if mode == "full" else 2))
            if raw.shape[1] < 3 * ((width + 1) // 2):
                raise ValueError(f"packed rows hold {raw.shape[1]} bytes, fewer than the "
                                 f"{3 * ((width + 1) // 2)} that {width} pixels need")
        else:
            width = raw.shape[1]
        self.width = int(width)
        if self.width % 2 or self.height % 2 or self.width < 2 or self.height < 2:
            raise ValueError(f"frame {self.width}x{self.height} must have even sides "
                             "(whole 2x2 Bayer cells)")
        self.raw = raw
        pattern = getattr(meta, "cfa_pattern", "RGGB")
        if pattern not in PATTERNS:
            raise ValueError(f"CFA pattern {pattern!r} is not a Bayer pattern the demosaic "
                             f"knows ({', '.join(PATTERNS)})")
        self.pattern = PATTERNS[pattern]
        self.method = METHODS[opts.demosaic]
        wb = opts.wb_gains or tuple(getattr(meta, "wb_gains", (1.0, 1.0, 1.0)))
        self.black = float(cal.black_level)
        grid = cal.shading_gains(float(getattr(meta, "aperture", 2.8)))
        scale, offset = _MODES[mode]
        # Where the frame's pixels lie in the readout's field (0..1): the whole
        # field, or a window of a full readout at `origin` (x0, y0).
        if origin is None:
            x0, y0, span_w, span_h = 0, 0, self.width, self.height
        else:
            x0, y0 = (int(v) for v in origin)
            if x0 % 2 or y0 % 2 or x0 < 0 or y0 < 0:
                raise ValueError(f"origin {origin!r} must be even, non-negative (x, y): "
                                 "a window keeps the mosaic phase")
            span_w = cal.sensor_width // (1 if mode == "full" else 2)
            span_h = cal.sensor_height // (1 if mode == "full" else 2)
        self.grid_rows = grid.shape[1]
        self.hgain = _horizontal_gains(grid, pattern, wb, 65535.0 / (cal.white_level - cal.black_level),
                                       offset + scale * (x0 + np.arange(self.width) + 0.5) / span_w)
        self.grid_y = ((offset + scale * (y0 + np.arange(self.height) + 0.5) / span_h)
                       * (self.grid_rows - 1)).astype(np.float32)
        self.defects = _defects(cal, mode, self.width, self.height, x0, y0)
        self.matrix = np.ascontiguousarray(white_balanced_matrix(cal.matrix(), wb),
                                           np.float32).ravel()
        self.lut = srgb_lut()
        self.denoise = opts.denoise_strength(float(getattr(meta, "analogue_gain", 1.0)))
        self.sharpen = float(opts.sharpen)
        self.dynamic_defects = opts.dynamic_defects
        self.finish = 1 if (self.denoise > 0 or self.sharpen > 0) else 0


def _horizontal_gains(grid, pattern, wb, full_scale, u) -> np.ndarray:
    """float32 [2][grid rows][width]: shading x WB x full-scale gain along each
    grid row, for even and odd image rows; u is each column's position in
    the grid's span (0..1). The C kernel lerps two of these rows per image row."""
    gc = grid.shape[2]
    gx = np.clip(u * (gc - 1), 0, gc - 1)
    ix = np.minimum(gx.astype(np.int64), gc - 2)
    fx = gx - ix
    channels = _channels(pattern)
    out = np.empty((2, grid.shape[1], len(u)), np.float32)
    for parity in (0, 1):
        for col in (0, 1):
            pos = 2 * parity + col
            g = grid[channels[pos]][:, ix[col::2]]
            g1 = grid[channels[pos]][:, ix[col::2] + 1]
            wbv = wb["RGB".index(pattern[pos])]
            out[parity][:, col::2] = (g + fx[col::2] * (g1 - g)) * (wbv * full_scale)
    return out


def _channels(pattern: str) -> list:
    """Calibration channel (R, Gr, Gb, B) of each 2x2 position."""
    out = []
    for pos, c in enumerate(pattern):
        if c != "G":
            out.append(_CHANNELS[c])
        else:  # a green shares its row with red (Gr) or blue (Gb)
            out.append(1 if "R" in pattern[2 * (pos // 2):2 * (pos // 2) + 2] else 2)
    return out


def _defects(cal, mode, width, height, x0=0, y0=0) -> tuple:
    """(ys, xs) of the calibration's defects in this frame (a readout, or its
    window at x0, y0), sorted by row."""
    pts = []
    for d in cal.defects:
        if mode == "binned":
            x, y = 2 * (d.x // 4) + d.x % 2, 2 * (d.y // 4) + d.y % 2
        elif mode == "zoom2x":
            x, y = d.x - cal.sensor_width // 4, d.y - cal.sensor_height // 4
        else:
            x, y = d.x, d.y
        x, y = x - x0, y - y0
        if 0 <= x < width and 0 <= y < height:
            pts.append((y, x))
    pts = sorted(set(pts))
    return (np.array([p[0] for p in pts], np.int64), np.array([p[1] for p in pts], np.int64))


class _Slot:
    """One strip's reusable buffers."""

    def __init__(self, plan: _Plan, rows: int):
        w = plan.width
        self.cfa = np.empty((rows + 2 * HALO, w), np.uint16)
        self.dpc = np.empty((3, w), np.uint16)    # modcam_isp_dpc's original rows
        self.rgb16 = np.empty((rows + 2 * plan.finish, w, 3), np.uint16)
        self.rgb8 = np.empty((rows + 2 * plan.finish, w, 3), np.uint8)
        self.final = np.empty((rows if plan.finish else 0, w, 3), np.uint8)


def _addr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _check(err: int, what: str) -> None:
    if err == -12:
        raise MemoryError(f"{what} could not allocate its scratch")
    if err:
        raise ValueError(f"{what} rejected its arguments (error {err})")


def _strip(plan: _Plan, slot: _Slot, r0: int, r1: int, out: np.ndarray | None) -> np.ndarray:
    """Output rows [r0, r1) into `out` (or slot.rgb8); returns the rows' view."""
    H, W = plan.height, plan.width
    f = plan.finish
    a, b = max(0, r0 - HALO), min(H, r1 + HALO)          # CFA rows in the buffer
    cfa = slot.cfa[:b - a]
    raw = plan.raw
    rs = raw.strides[0]
    packed = ffi.cast("const uint8_t *", _addr(raw)) if plan.packed else ffi.NULL
    cfa16 = ffi.NULL if plan.packed else ffi.cast("const uint16_t *", _addr(raw))
    _check(lib.modcam_isp_cfa(packed, rs, cfa16, rs // 2, W, a, b, plan.black,
                              ffi.cast("const float *", _addr(plan.hgain)), plan.grid_rows,
                              ffi.cast("const float *", _addr(plan.grid_y)),
                              ffi.cast("uint16_t *", _addr(cfa)), W), "modcam_isp_cfa")
    _fix_defects(plan, cfa, a, b)
    if plan.dynamic_defects:
        _fix_dynamic(cfa, slot, a, b, H, W)
    d0, d1 = max(0, r0 - f), min(H, r1 + f)               # RGB rows computed
    rgb16 = slot.rgb16[:d1 - d0]
    virtual = _addr(cfa) - a * cfa.strides[0]             # row 0 of a whole-frame CFA
    _check(lib.modcam_demosaic(ffi.cast("const uint16_t *", virtual), W, W, H, plan.pattern,
                               plan.method, d0, d1, ffi.cast("uint16_t *", _addr(rgb16)), 3 * W),
           "modcam_demosaic")
    dst = slot.rgb8[:d1 - d0] if (f or out is None) else out
    _check(lib.modcam_isp_rgb(ffi.cast("const uint16_t *", _addr(rgb16)), 3 * W, W, d1 - d0,
                              ffi.cast("const float *", _addr(plan.matrix)),
                              ffi.cast("const uint8_t *", _addr(plan.lut)),
                              ffi.cast("uint8_t *", _addr(dst)), dst.strides[0]), "modcam_isp_rgb")
    if not f:
        return dst
    n = r1 - r0
    final = slot.final[:n] if out is None else out
    _check(lib.modcam_isp_finish(ffi.cast("const uint8_t *", _addr(dst)), dst.strides[0], W,
                                 d1 - d0, d0 == r0, d1 == r1, plan.sharpen, plan.denoise,
                                 ffi.cast("uint8_t *", _addr(final)), final.strides[0]),
           "modcam_isp_finish")
    return final


def _fix_dynamic(cfa: np.ndarray, slot, a: int, b: int, H: int, W: int) -> None:
    """Dynamic defects on the rows of the buffer whose neighbours two rows
    away are exactly what a whole frame has there (after the listed fixes):
    away from the image's edges that needs 4 rows of margin in the buffer."""
    lo = 2 if a == 0 else 4
    hi = (b - a) - (2 if b == H else 4)
    if hi <= lo:
        return
    _check(lib.modcam_isp_dpc(ffi.cast("uint16_t *", _addr(cfa)), W, W, b - a, lo, hi,
                              DPC_THRESHOLD, ffi.cast("uint16_t *", _addr(slot.dpc)), ffi.NULL),
           "modcam_isp_dpc")


def _fix_defects(plan: _Plan, cfa: np.ndarray, a: int, b: int) -> None:
    """Replace each defect in buffer rows [a, b) by the median of its four
    same-colour neighbours (2 pixels away) that lie in the image; every value
    is taken before any is written, so the result does not depend on order."""
    ys, xs = plan.defects
    lo, hi = np.searchsorted(ys, a), np.searchsorted(ys, b)
    if lo == hi:
        return
    y, x = ys[lo:hi] - a, xs[lo:hi]
    vals = np.full((hi - lo, 4), np.nan)
    for k, (dy, dx) in enumerate(((0, -2), (0, 2), (-2, 0), (2, 0))):
        ny, nx = y + dy, x + dx
        ok = (ny >= 0) & (ny < b - a) & (nx >= 0) & (nx < plan.width)
        vals[ok, k] = cfa[ny[ok], nx[ok]]
    # np.median is several times cheaper than nanmedian; most defects have all four
    med = np.median(vals, axis=1) if not np.isnan(vals).any() else np.nanmedian(vals, axis=1)
    cfa[y, x] = np.round(med).astype(np.uint16)


# ---- running strips ----

def _bounds(height: int, rows: int) -> list:
    return [(r, min(r + rows, height)) for r in range(0, height, rows)]


def _run_to_array(plan: _Plan, opts: DevelopOptions) -> np.ndarray:
    out = np.empty((plan.height, plan.width, 3), np.uint8)
    strips = iter(_bounds(plan.height, opts.strip_rows))
    lock = threading.Lock()

    def worker():
        slot = _Slot(plan, opts.strip_rows)
        while True:
            with lock:
                s = next(strips, None)
            if s is None:
                return
            _strip(plan, slot, s[0], s[1], out[s[0]:s[1]])

    _parallel(worker, opts.threads)
    return out


def _parallel(worker, threads: int) -> None:
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="modcam-isp") as pool:
        futures = [pool.submit(worker) for _ in range(threads)]
    for f in futures:
        f.result()


def _run_to_sink(plan: _Plan, opts: DevelopOptions, write) -> None:
    """Workers fill slots strip by strip; this thread passes them to `write`
    in order. A slot goes back to the free queue once written."""
    bounds = _bounds(plan.height, opts.strip_rows)
    nslots = min(len(bounds), opts.threads + 2)
    free: queue.Queue = queue.Queue()
    for _ in range(nslots):
        free.put(_Slot(plan, opts.strip_rows))
    done = [None] * len(bounds)
    ready = [threading.Event() for _ in bounds]
    stop = threading.Event()
    order = iter(range(len(bounds)))
    lock = threading.Lock()

    def worker():
        while not stop.is_set():
            slot = free.get()
            if slot is None:
                return
            with lock:
                k = next(order, None)
            if k is None:
                free.put(slot)
                return
            try:
                done[k] = (slot, _strip(plan, slot, *bounds[k], None))
            except BaseException as exc:  # handed to the writing thread
                done[k] = (slot, exc)
            ready[k].set()

    pool = ThreadPoolExecutor(max_workers=opts.threads, thread_name_prefix="modcam-isp")
    futures = [pool.submit(worker) for _ in range(opts.threads)]
    try:
        for k in range(len(bounds)):
            ready[k].wait()
            slot, rows = done[k]
            done[k] = None
            if isinstance(rows, BaseException):
                raise rows
            write(rows)
            free.put(slot)
    finally:
        stop.set()
        for _ in futures:
            free.put(None)
        pool.shutdown(wait=True)


def develop(raw: np.ndarray, meta, calibration, options: DevelopOptions | dict = DevelopOptions(),
            sink=None, *, width: int | None = None, origin: tuple | None = None
            ) -> np.ndarray | None:
    """Develop one RAW frame into 8-bit sRGB.

    raw: packed RAW12 uint8 (H, stride), its width from `width`, meta.width or
    the readout mode (calibration sensor width, halved for binned/zoom2x); or a
    uint16 CFA (H, W). meta: a writers.PictureMeta (readout_mode, cfa_pattern,
    aperture for the shading grid, analogue_gain for denoise "auto", wb_gains
    when options give none). sink: None to return the (H, W, 3) uint8 image,
    else a callable or an object with write_rows(), given (rows, W, 3) uint8
    strips top to bottom on the calling thread; each strip is only valid
    during the call (its buffer is reused). origin: (x0, y0), even, when the
    frame is a window of the readout at that position (shading and defects
    are placed accordingly); default: the frame is the whole field of view."""
    if isinstance(options, dict):
        options = DevelopOptions.from_dict(options)
    elif not isinstance(options, DevelopOptions):
        raise ValueError(f"options must be DevelopOptions or a dict, not {type(options).__name__}")
    plan = _Plan(raw, meta, calibration, options, width, origin)
    if sink is None:
        return _run_to_array(plan, options)
    write = getattr(sink, "write_rows", sink)
    if not callable(write):
        raise ValueError(f"sink must be callable or have write_rows(), not {type(sink).__name__}")
    _run_to_sink(plan, options, write)
    return None


def develop_to_jpeg(raw: np.ndarray, meta, calibration, target, quality: int = 90,
                    options: DevelopOptions | dict = DevelopOptions(), *,
                    width: int | None = None) -> bytes | None:
    """develop() streamed into a JPEG with Exif from `meta` (a PictureMeta)
    at `target` (path, fd, or None for bytes, as JpegWriter). Returns the
    JPEG for a None target."""
    from modcam.isp.writers import JpegWriter, PictureMeta

    if not isinstance(meta, PictureMeta):
        raise ValueError(f"meta must be a writers.PictureMeta, not {type(meta).__name__}")
    h = raw.shape[0]
    w = width or (raw.shape[1] if raw.dtype == np.uint16 else
                  calibration.sensor_width // (1 if meta.readout_mode == "full" else 2))
    with JpegWriter(target, w, h, quality=quality, meta=meta) as jpeg:
        develop(raw, meta, calibration, options, sink=jpeg, width=w)
        return jpeg.finish()
