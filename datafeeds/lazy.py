"""A package's public names loaded on first use (PEP 562), so importing the package stays light.

Each package's ``__init__`` names its exports and their modules once and takes ``__getattr__`` and
``__dir__`` from :func:`lazy_exports`: ``--help`` answers without pandas, torch or backtrader.
"""

from __future__ import annotations

import importlib
import sys


def lazy_exports(package: str, exports: dict[str, str]):
    """``(__getattr__, __dir__)`` for ``package``, whose public names map to the modules that define them
    (absolute, or relative to the package). A name, once loaded, is kept in the package's namespace."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value  # later lookups skip this function
        return value

    def __dir__():
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
