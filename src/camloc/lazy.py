"""Package faces whose names are imported on first use (PEP 562), so that importing a
package loads nothing heavy until a name is used.

>>> getattr_, dir_ = lazy_exports("json", {"JSONDecoder": "decoder"}, ["JSONDecoder"], {})
>>> getattr_("JSONDecoder").__name__, dir_()
('JSONDecoder', ['JSONDecoder'])
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str], public: list[str],
                 namespace: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps a public name to the
    submodule defining it; a name is imported on first access and kept in ``namespace``
    (the package's ``globals()``), so later accesses are plain lookups."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return public

    return __getattr__, __dir__
