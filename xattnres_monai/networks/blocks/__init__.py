from .dca import ChannelCrossAttention, DepthwiseProjection, DualCrossAttention, SpatialCrossAttention
from .xattnres import QUERY_INITS, XAttnRes

__all__ = [
    "XAttnRes",
    "QUERY_INITS",
    "DualCrossAttention",
    "ChannelCrossAttention",
    "SpatialCrossAttention",
    "DepthwiseProjection",
]
