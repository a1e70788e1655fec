"""ISP benchmark: our demosaic and develop against OpenCV, colour-demosaicing and LibRaw.

All in one run, on the same data:
  - demosaic quality: mean PSNR on scikit-image's colour photographs mosaicked
    RGGB (normalised to [0, 1], 8 px border excluded) for ours (high), OpenCV
    bilinear (COLOR_BayerBG2RGB is OpenCV's name for RGGB) and
    colour-demosaicing's Malvar2004;
  - demosaic speed at 100 MP: ours (2 threads) against OpenCV bilinear (its
    default threads on this machine: stated in the JSON), measured in
    interleaved pairs (medians; a shared VM drifts), and Malvar2004 at
    25 MP (it is too slow for 100 MP in a benchmark run);
  - develop: a 100 MP RAW12 frame from the virtual module to a JPEG q90, and a
    25 MP binned one; LibRaw (rawpy) LINEAR on a DNG of the same 100 MP frame;
  - peak memory of the 100 MP develop above the process baseline.
Prints a table, then one JSON line.  --quick repeats less.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))
from modcam.isp import demosaic  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")
FULL = (8672, 11552)
BINNED = (4336, 5776)


def mosaic_rggb(rgb):
    cfa = rgb[..., 1].copy()
    cfa[0::2, 0::2] = rgb[0::2, 0::2, 0]
    cfa[1::2, 1::2] = rgb[1::2, 1::2, 2]
    return cfa


def psnr(a, b, border=8):
    d = (a - b)[border:-border, border:-border]
    return float(10 * np.log10(1.0 / np.mean(d * d)))


def quality():
    """Mean PSNR of each method over the same photographs."""
    import cv2
    import skimage.data
    from colour_demosaicing import demosaicing_CFA_Bayer_Malvar2004

    scores = {"ours": [], "opencv_bilinear": [], "malvar2004": []}
    for name in PHOTOS:
        img = getattr(skimage.data, name)()[..., :3]
        h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
        img = img[:h, :w].astype(np.float64) / 255.0
        cfa = np.round(mosaic_rggb(img) * 65535).astype(np.uint16)
        scores["ours"].append(psnr(np.clip(demosaic(cfa, "RGGB") / 65535, 0, 1), img))
        scores["opencv_bilinear"].append(
            psnr(cv2.cvtColor(cfa, cv2.COLOR_BayerBG2RGB) / 65535, img))
        scores["malvar2004"].append(
            psnr(np.clip(demosaicing_CFA_Bayer_Malvar2004(cfa / 65535, "RGGB"), 0, 1), img))
    return {k: round(statistics.mean(v), 2) for k, v in scores.items()}


def best_time(fn, reps):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def demosaic_speed(reps):
    import cv2
    from colour_demosaicing import demosaicing_CFA_Bayer_Malvar2004

    cfa = np.random.default_rng(0).integers(256, 4096, FULL, dtype=np.uint16)
    ours_out = np.empty(FULL + (3,), np.uint16)
    cv_out = np.empty(FULL + (3,), np.uint16)
    # Interleaved, so a drift of this shared machine's speed hits both alike;
    # the ratio is the median of the paired ratios.
    pairs = [(best_time(lambda: demosaic(cfa, "RGGB", out=ours_out), 2),
              best_time(lambda: cv2.cvtColor(cfa, cv2.COLOR_BayerBG2RGB, dst=cv_out), 2))
             for _ in range(reps)]
    ours = statistics.median(p[0] for p in pairs)
    opencv = statistics.median(p[1] for p in pairs)
    ratio = statistics.median(p[1] / p[0] for p in pairs)
    small = cfa[:BINNED[0], :BINNED[1]] / 4095.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        malvar25 = best_time(lambda: demosaicing_CFA_Bayer_Malvar2004(small, "RGGB"), 1)
    mp = FULL[0] * FULL[1] / 1e6
    return {"demosaic_s": ours, "opencv_bilinear_s": opencv, "malvar25_s": malvar25, "ratio": ratio,
            "demosaic_mps": mp / ours, "opencv_bilinear_mps": mp / opencv,
            "opencv_threads": cv2.getNumThreads()}


SERIAL = "BENCH-ISP-1"


def virtual_frame(mode):
    """A RAW12 frame of the studio scene from the virtual module's physics."""
    from modcam.virtual import sensor_model as sm
    from modcam.virtual.physical_source import PhysicalSource
    from modcam.virtual.streamer import FrameSettings, readout_geometry

    w, h, stride = readout_geometry(sm.WIDTH, sm.HEIGHT, mode)
    settings = FrameSettings(readout_mode=mode, width=w, height=h, stride=stride,
                             exposure_us=10000, analogue_gain=1.0, aperture=2.8,
                             lens_position=1 / 1.2, scene="studio", scene_distance_m=1.2,
                             scene_seed=1, lux=1000.0, illuminant="D65")
    return PhysicalSource(SERIAL, bank_size=1).packed_frame(settings, 0), w


def picture_meta(mode):
    from datetime import datetime, timezone

    from modcam.calibration import virtual_calibration
    from modcam.isp.writers import PictureMeta

    cal = virtual_calibration(SERIAL)
    white = np.linalg.solve(cal.matrix(), np.ones(3))   # the unit's native D65 white
    return cal, PictureMeta.from_calibration(
        cal, make="modcam", model="Virtual", firmware="1.0", exposure_us=10000,
        analogue_gain=1.0, aperture=2.8, lens_position=1 / 1.2,
        timestamp=datetime.now(timezone.utc), readout_mode=mode,
        wb_gains=tuple(float(white[1] / w) for w in white))   # the scene is lit by D65


def develop_speed(tmp, reps):
    from modcam import raw12
    from modcam.isp import develop_to_jpeg
    from modcam.isp.writers import write_dng

    out = {}
    for mode, key in (("full", "jpeg100_s"), ("binned", "jpeg25_s")):
        packed, width = virtual_frame(mode)
        cal, meta = picture_meta(mode)
        jpeg = os.path.join(tmp, f"{mode}.jpg")
        out[key] = best_time(lambda: develop_to_jpeg(packed, meta, cal, jpeg, quality=90), reps)
        out[f"{key[:-2]}_mb"] = os.path.getsize(jpeg) / 1e6
        if mode == "full":
            np.save(os.path.join(tmp, "full.npy"), packed)
            dng = os.path.join(tmp, "full.dng")
            write_dng(dng, raw12.unpack(packed, width), meta, cal)
            out["rawpy_linear100_s"] = rawpy_linear(dng)
    return out


def rawpy_linear(dng):
    import rawpy

    def run():
        with rawpy.imread(dng) as raw:
            raw.postprocess(demosaic_algorithm=rawpy.DemosaicAlgorithm.LINEAR)
    return best_time(run, 1)


# ru_maxrss survives fork and exec (a child of this big process would report
# our peak), so the child reads VmHWM, after resetting it to the current RSS.
_PEAK = """
import sys, numpy as np
sys.path.insert(0, {daemon!r}); sys.path.insert(0, {bench!r})
from isp import picture_meta
from modcam.isp import develop_to_jpeg
def kb(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field))
cal, meta = picture_meta("full")
develop_to_jpeg(np.zeros((64, 17328), np.uint8), meta, cal, {warm!r})   # imports, pools, LUTs
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")                                                       # VmHWM := VmRSS
base = kb("VmRSS:")
packed = np.load({raw!r})
develop_to_jpeg(packed, meta, cal, {out!r}, quality=90)
print((kb("VmHWM:") - base) / 1024, packed.nbytes / 2**20)
"""


def peak_memory(tmp):
    """Peak RSS of a 100 MP develop above the process baseline, in a fresh
    process; the RAW frame itself is counted (it is loaded after the baseline)."""
    here = Path(__file__).resolve().parent
    code = _PEAK.format(daemon=str(here.parent / "daemon"), bench=str(here),
                        warm=os.path.join(tmp, "warm.jpg"), raw=os.path.join(tmp, "full.npy"),
                        out=os.path.join(tmp, "peak.jpg"))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak, raw = (float(x) for x in run.stdout.split())
    return peak, raw


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = ap.parse_args()
    reps = 3 if args.quick else 7
    q = quality()
    s = demosaic_speed(reps)
    with tempfile.TemporaryDirectory(prefix="modcam-isp-") as tmp:
        d = develop_speed(tmp, reps)
        peak_mb, raw_mb = peak_memory(tmp)
    result = {
        "demosaic_mps": round(s["demosaic_mps"], 1),
        "opencv_bilinear_mps": round(s["opencv_bilinear_mps"], 1),
        "ratio_opencv": round(s["ratio"], 3),
        "opencv_threads": s["opencv_threads"],
        "psnr_db": q["ours"], "opencv_bilinear_psnr_db": q["opencv_bilinear"],
        "malvar2004_psnr_db": q["malvar2004"], "malvar2004_25mp_s": round(s["malvar25_s"], 2),
        "demosaic100_s": round(s["demosaic_s"], 3),
        "jpeg100_s": round(d["jpeg100_s"], 3), "jpeg25_s": round(d["jpeg25_s"], 3),
        "rawpy_linear100_s": round(d["rawpy_linear100_s"], 2),
        "peak_rss_mb": round(peak_mb, 1), "raw_frame_mb": round(raw_mb, 1),
        "peak_over_raw": round(peak_mb / raw_mb, 2),
    }
    print(f"{'method':>18} {'PSNR dB':>8} {'time':>10}")
    print(f"{'ours (high)':>18} {q['ours']:8.2f} {s['demosaic_s']:9.3f}s  100 MP")
    print(f"{'OpenCV bilinear':>18} {q['opencv_bilinear']:8.2f} {s['opencv_bilinear_s']:9.3f}s  100 MP")
    print(f"{'Malvar2004':>18} {q['malvar2004']:8.2f} {s['malvar25_s']:9.3f}s   25 MP")
    print(f"100 MP RAW12 -> JPEG q90: {d['jpeg100_s']:.3f} s ({d['jpeg100_mb']:.1f} MB); "
          f"25 MP binned -> JPEG: {d['jpeg25_s']:.3f} s; LibRaw LINEAR on the same DNG: "
          f"{d['rawpy_linear100_s']:.2f} s")
    print(f"peak memory of the 100 MP develop above baseline: {peak_mb:.0f} MB "
          f"({peak_mb / raw_mb:.2f}x the {raw_mb:.0f} MB RAW frame)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
