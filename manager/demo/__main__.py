"""`python -m satchel.manager.demo` (what `make demo` runs)."""

from __future__ import annotations

import sys

from satchel.manager.demo.story import main

sys.exit(main())
