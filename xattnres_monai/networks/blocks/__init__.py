from .dca import ChannelCrossAttention, DepthwiseProjection, DualCrossAttention, SpatialCrossAttention
from .emcad import CAB, EUCB, LGAG, MSCB, SAB, EMCADDecoder
from .xattnres import QUERY_INITS, XAttnRes

__all__ = [
    "XAttnRes",
    "QUERY_INITS",
    "DualCrossAttention",
    "ChannelCrossAttention",
    "SpatialCrossAttention",
    "DepthwiseProjection",
    "EMCADDecoder",
    "CAB",
    "SAB",
    "MSCB",
    "EUCB",
    "LGAG",
]
