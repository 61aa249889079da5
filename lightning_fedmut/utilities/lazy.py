"""Names a package exports but loads on first use (PEP 562), so importing the package stays cheap."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, namespace: dict[str, Any], exports: Mapping[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``: each name of ``exports`` imported from its module when
    first read, then kept in the package's ``namespace``.

    Examples:
        >>> namespace = {}
        >>> getattr_, dir_ = lazy_exports("pkg", namespace, {"sqrt": "math"})
        >>> getattr_("sqrt")(9.0), "sqrt" in namespace, dir_()
        (3.0, True, ['sqrt'])
        >>> getattr_("cbrt")
        Traceback (most recent call last):
        ...
        AttributeError: module 'pkg' has no attribute 'cbrt'
    """

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
