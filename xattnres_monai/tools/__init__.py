"""Command-line tools around the bundles (MONAI Label server: :mod:`xattnres_monai.tools.label_server`)."""
