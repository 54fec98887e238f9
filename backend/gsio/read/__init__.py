"""Readers, one module per format; each turns a file into `Splats` (see backend.gsio)."""
