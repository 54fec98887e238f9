"""Neural fields shared by the avatar and training: the multiresolution hash encoding.

Torch only, nothing from training: a hybrid avatar (backend/avatar/hybrid.py) evaluates it when
it is loaded, the NeRF stage and the colour field (backend/train) train it.
"""

from .hashgrid import GridShape, HashGridEncoding, per_level_scale, table_entries, tcnn_available, tcnn_encoding_config

__all__ = ["HashGridEncoding", "GridShape", "table_entries", "per_level_scale", "tcnn_available", "tcnn_encoding_config"]
