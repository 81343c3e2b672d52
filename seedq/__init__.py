"""seedq: reasoning-tree construction with SeeD scheduled speculative decoding."""

from seedq.threads import default_wait_policy

default_wait_policy()  # before anything imports torch: OpenMP reads it when it loads

__version__ = "0.1.0"
