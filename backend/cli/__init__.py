"""Command-line commands of `python -m backend` (one module per command)."""
