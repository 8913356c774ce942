"""xattnres-monai: Cross-Stage Attention Residuals (XAttnRes) as MONAI components."""

import logging as _logging
import warnings as _warnings

__version__ = "0.1.0"

# MONAI 1.6 builds its GPU DICOM reader (nvImageCodec) with every ``LoadImage`` when pydicom is installed, and on a
# machine without that codec says so twice per construction; nothing a user can act on (pydicom's own decoders and
# ITK are used), so these two notices are silenced, nothing else.
_logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(_logging.ERROR)
_warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register")
