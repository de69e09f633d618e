"""Built-in passes, importable as ``surgeon.passes``. Importing this package registers every
pass module in it (one pass per module; modules starting with ``_`` are helpers)."""

from __future__ import annotations

import importlib
import pkgutil

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
