from .xattnres_unet import XATTNRES_PLACEMENTS, XAttnResUNet

__all__ = ["XAttnResUNet", "XATTNRES_PLACEMENTS"]
