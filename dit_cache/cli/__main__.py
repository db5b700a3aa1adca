"""`python -m dit_cache.cli` / `torchrun -m dit_cache.cli`."""
import sys

from .main import main

sys.exit(main())
