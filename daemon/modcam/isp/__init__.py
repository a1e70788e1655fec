"""The host-side ISP: RAW frames to pictures, strip by strip (see DESIGN.md)."""
from modcam.isp.demosaic import demosaic
from modcam.isp.options import DevelopOptions
from modcam.isp.pipeline import develop, develop_to_jpeg

__all__ = ["DevelopOptions", "demosaic", "develop", "develop_to_jpeg"]
