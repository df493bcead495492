"""vvm: visualizing vision models with layer-by-layer CKA."""

__version__ = "0.1.0"
