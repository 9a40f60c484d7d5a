"""The Satchel bundle format: manifest, canonical JSON, signing, trust, packing, verification.

Pure by design: this package takes bytes and file objects and returns verified objects or
raises a `bundles.errors.BundleError`. No network, no database, no ML runtime.
"""

from __future__ import annotations

FORMAT_VERSION = 1
