"""XAttnRes as a plug-in for MONAI's own networks: the original class, its modules and parameter names, plus
``routing.*`` blocks over a history pool (:mod:`.base` explains the mechanism and how to add another network)."""

from .base import (
    ROUTING_PREFIX,
    XATTNRES_PLACEMENTS,
    NoRouting,
    Stage,
    XAttnResPlugin,
    build_routing,
    load_plain_state_dict,
    stage_names,
)
from .basic_unet import XAttnResBasicUNet
from .dynunet import XAttnResDynUNet

__all__ = [
    "XAttnResDynUNet",
    "XAttnResBasicUNet",
    "XAttnResPlugin",
    "Stage",
    "NoRouting",
    "build_routing",
    "stage_names",
    "load_plain_state_dict",
    "ROUTING_PREFIX",
    "XATTNRES_PLACEMENTS",
]
