"""Writers, one module per format; each writes `Splats` atomically (see backend.gsio)."""
