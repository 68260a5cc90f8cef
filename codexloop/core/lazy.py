"""A module imported on first use (an attribute looked up), or ahead in a thread."""

from __future__ import annotations

import importlib
import threading
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for module ``name`` until an attribute is asked for, then imports it."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attribute: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attribute)

    def preload(self) -> None:
        """Import it now in a thread of its own, beside whatever runs meanwhile (Python's
        import lock makes a use that comes first wait for it, never import it twice)."""
        threading.Thread(
            target=importlib.import_module,
            args=(self._name,),
            name=f"import-{self._name}",
            daemon=True,
        ).start()
