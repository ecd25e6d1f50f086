"""tbps: text-based person search with CLIP (TBPS-CLIP) as a reproducible pipeline."""

__version__ = "0.1.0"
