"""`python -m manager.demo` (what `make demo` runs)."""

from __future__ import annotations

import sys

from manager.demo.story import main

sys.exit(main())
