"""xattnres-monai: Cross-Stage Attention Residuals (XAttnRes) as MONAI components."""

__version__ = "0.1.0"
