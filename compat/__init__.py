"""Compatibility between embedding spaces: adapters, training-time objectives, metrics, protocols.

``compat.adapters`` is imported first, whatever module of the package a caller names: the adapter
modules subclass its ``Adapter`` and it registers them at its end, so entering the package through
one of them (``import compat.linear_adapters``) would otherwise meet a half-initialised module.
"""

from compat import adapters as adapters  # noqa: F401  (registers every adapter; see above)
