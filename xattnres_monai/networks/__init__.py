"""Networks: ``blocks`` (the XAttnRes mechanism and other building blocks) and ``nets`` (whole networks)."""
