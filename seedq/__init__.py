"""seedq: reasoning-tree construction with SeeD scheduled speculative decoding."""

__version__ = "0.1.0"
