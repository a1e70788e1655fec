"""The one place that loads the C extension (modcam._native).

MODCAM_NATIVE_DIR names a directory holding another build of the same
extension (the ASan/UBSan build made by `make asan`); tests run against it
with the sanitizer runtime preloaded. Everything else imports ffi and lib
from here.
"""
import importlib.util
import os

__all__ = ["ffi", "lib", "build_path"]


def _load_override(directory):
    for name in sorted(os.listdir(directory)):
        if name.startswith("_native.") and name.endswith(".so"):
            path = os.path.join(directory, name)
            spec = importlib.util.spec_from_file_location("modcam._native", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    raise ImportError(f"MODCAM_NATIVE_DIR={directory} holds no _native extension")


_override = os.environ.get("MODCAM_NATIVE_DIR")
if _override:
    _native = _load_override(_override)
else:
    from modcam import _native

ffi = _native.ffi
lib = _native.lib
build_path = _native.__file__
