"""`ditcache`: the command line (one module per sub-command)."""
from .main import main

__all__ = ["main"]
