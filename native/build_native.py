"""cffi build script for modcam._native (API mode, out-of-line).

Every C source in native/ (not native/fuzz/) is compiled into one extension.
The public C API Python may call is declared in native/NAME.cdef, one per
public header native/NAME.h, so each unit owns its declarations next to its code.

Environment:
  MODCAM_SANITIZE=1   build with AddressSanitizer and UBSan (see Makefile `asan`).
"""
import os
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

ffibuilder = FFI()
for cdef in sorted(HERE.glob("*.cdef")):
    ffibuilder.cdef(cdef.read_text(), override=False)

# Each cdef file declares the public API of the header with the same name.
_headers = "".join(f'#include "{c.stem}.h"\n' for c in sorted(HERE.glob("*.cdef")))
# Relative to the repository root, where setup.py runs (setuptools refuses absolute paths).
_sources = [str(p.relative_to(HERE.parent)) for p in sorted(HERE.glob("*.c"))]

_cflags = ["-std=gnu11", "-O3", "-Wall", "-Wextra", "-Wno-unused-parameter",
           "-fvisibility=hidden"]
_ldflags = []
if os.environ.get("MODCAM_SANITIZE"):
    # -fno-wrapv: Python's own CFLAGS add -fwrapv, which hides signed overflow from UBSan.
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-wrapv",
           "-fno-sanitize-recover=undefined", "-O1", "-g"]
    _cflags += san
    _ldflags += ["-fsanitize=address,undefined"]

ffibuilder.set_source(
    "modcam._native",
    _headers,
    sources=_sources,
    include_dirs=[str(HERE)],
    extra_compile_args=_cflags,
    extra_link_args=_ldflags,
    libraries=["jpeg"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=False)
