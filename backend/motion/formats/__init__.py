"""One module per source format family; each exposes ``load(path, ctx) -> Motion``.

Loaders return the motion in the SOURCE world (``source_up_axis`` says which axis is up
there) with hands already absolute; ``backend.motion.loader`` then repairs/validates and
turns the world Y-up.
"""
