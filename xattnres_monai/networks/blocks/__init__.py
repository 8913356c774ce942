from .xattnres import QUERY_INITS, XAttnRes

__all__ = ["XAttnRes", "QUERY_INITS"]
