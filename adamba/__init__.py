"""adamba: small, efficient, adaptive language models, trained end to end."""

__version__ = "0.1.0"
