"""Stage I of the DreamWaltz-G recipe: a hash-grid NeRF grown off a body-shaped start.

`NeRFStage` (stage.py) is the API the trainer uses; the parts have their own modules: the
field (field.py), the occupancy grid (occupancy.py), ray marching and volume rendering
(raymarch.py), body geometry (mesh.py), the body pretraining and its cache (pretrain.py), the
sigma-prior (prior.py) and the conversion to the avatar's Gaussians (convert.py).
"""

from .config import NeRFConfig
from .field import NeRFField
from .occupancy import OccupancyGrid
from .pretrain import NeRFCacheError, pretrained_field
from .stage import NeRFStage

__all__ = ["NeRFConfig", "NeRFField", "NeRFStage", "NeRFCacheError", "OccupancyGrid", "pretrained_field"]
