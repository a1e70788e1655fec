"""The ISP's writers: JPEG with Exif, DNG 1.4, PNG 8/16-bit (docs/formats.md).

    from modcam.isp.writers import PictureMeta, JpegWriter, write_dng, write_png

Every writer takes a path (written atomically) or a caller's fd, and raises
WriteError (an OSError with the cause in .errno and a sentence as its text)
when the target refuses the bytes: a full disk, an I/O error, a closed fd.
"""
from .dng import dng_colour_matrix, write_dng
from .exif import exif_fields
from .jpeg import JpegWriter, exif_blob, write_jpeg
from .meta import READOUT_MODES, PictureMeta
from .output import WriteError
from .png import write_png, write_png_strips

__all__ = ["PictureMeta", "READOUT_MODES", "WriteError", "JpegWriter", "write_jpeg",
           "exif_blob", "exif_fields", "write_dng", "dng_colour_matrix", "write_png",
           "write_png_strips"]
