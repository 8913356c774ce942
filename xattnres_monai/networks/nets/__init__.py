from .emcad import EMCAD_CONFIGURATIONS, EMCADNet, emcad_summary
from .pvt import PVT_V2_CONFIGS, PVTv2, PVTv2Encoder, load_pvt_pretrained
from .xattnres_unet import XATTNRES_PLACEMENTS, XAttnResUNet

__all__ = [
    "XAttnResUNet",
    "XATTNRES_PLACEMENTS",
    "EMCADNet",
    "EMCAD_CONFIGURATIONS",
    "emcad_summary",
    "PVTv2",
    "PVTv2Encoder",
    "PVT_V2_CONFIGS",
    "load_pvt_pretrained",
]
