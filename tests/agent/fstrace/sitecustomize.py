"""Test-only: loaded by Python at start-up when this directory is on PYTHONPATH.

Installs the fsync tracer of `fstrace_hook` when $SATCHEL_TEST_FSTRACE names a log file.
"""

import os

if os.environ.get("SATCHEL_TEST_FSTRACE"):
    import fstrace_hook

    fstrace_hook.install()
