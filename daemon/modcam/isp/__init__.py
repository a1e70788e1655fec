"""The host-side ISP: RAW frames to pictures, strip by strip (see DESIGN.md)."""
from modcam.isp.demosaic import demosaic

__all__ = ["demosaic"]
