"""DreamWaltz backend: body models, Gaussian avatars, rasterizers, motion and the server.

Importing this package must stay cheap and torch-free: the Blender add-on imports its
stdlib-only modules (the protocol) and the server imports torch only where work needs it.
"""

__version__ = "0.1.0"
