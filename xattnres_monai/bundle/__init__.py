"""What makes a trained bundle a bundle: the settings a model was trained with travel with it.

Training records its settings (network definition, input size, intensity window, class map) in ``models/model.pt``
and writes them into the bundle's own ``configs/*.json`` (:mod:`.settings`, :mod:`.trained`), so that the bundle's
inference, evaluation and export commands work with no overrides, and a configuration that disagrees with the
model is refused with one line naming both values.
"""

from xattnres_monai.bundle.settings import check_settings, settings_differences, trained_settings
from xattnres_monai.bundle.trained import update_bundle_configs

__all__ = ["check_settings", "settings_differences", "trained_settings", "update_bundle_configs"]
