"""Time bounds of the integration tests, stretched when the suite runs over
the ASan/UBSan build (`make test-asan` sets MODCAM_TEST_SLOWDOWN): every
native call is instrumented there and Python allocates through the system
malloc, so a latency promise of the production build is checked with the
same test, within SLOWDOWN times its bound."""
from __future__ import annotations

import os

SLOWDOWN = float(os.environ.get("MODCAM_TEST_SLOWDOWN", "1"))
if SLOWDOWN < 1:
    raise ValueError(f"MODCAM_TEST_SLOWDOWN={SLOWDOWN} is below 1")


def bound(seconds: float) -> float:
    """A time bound of the production build, as it applies in this run."""
    return seconds * SLOWDOWN
