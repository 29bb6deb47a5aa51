"""One registry per policy kind, keyed by name.

Why a registry: the live stores, the cache simulator and `t2i trace cache --policy NAME` must
build the same policy from the same string, so a result measured offline names exactly the code
that runs online. A name that contains ":" is an escape hatch, ``"pkg.mod:attr"``, so an
experiment can plug a policy in without editing this package.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """Unknown or duplicate policy name; the message lists what is registered."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Maps a policy name to a factory ``(**kwargs) -> policy``."""

    def __init__(self, kind: str, discover: str | None = None) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}
        self._discover = discover  # package whose modules register more policies of this kind
        self._discovered = False

    def _ensure_discovered(self) -> None:
        """Import every module of the discovery package once, so a policy registered in any of
        them (a cost-aware one, a coordinator) is found by name wherever the lookup happens."""
        if self._discovered or self._discover is None:
            return
        self._discovered = True
        import pkgutil

        pkg = importlib.import_module(self._discover)
        for mod in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{self._discover}.{mod.name}")

    def register(self, name: str, factory: Callable[..., T] | None = None):
        """Register ``factory`` under ``name``; usable as a decorator. Duplicates raise."""

        def add(f: Callable[..., T]) -> Callable[..., T]:
            key = name.lower()
            if ":" in key:
                raise RegistryError(f"{self.kind} policy name {name!r} may not contain ':'")
            if key in self._factories:
                raise RegistryError(f"{self.kind} policy {name!r} is already registered")
            self._factories[key] = f
            return f

        return add(factory) if factory is not None else add

    def names(self) -> list[str]:
        self._ensure_discovered()
        return sorted(self._factories)

    def __contains__(self, name: str) -> bool:
        self._ensure_discovered()
        return name.lower() in self._factories or ":" in name

    def factory(self, name: str) -> Callable[..., T]:
        if ":" in name:
            module_name, _, attr = name.partition(":")
            try:
                obj = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as exc:
                raise RegistryError(f"{self.kind} policy {name!r} cannot be imported: {exc}") from exc
            if not callable(obj):
                raise RegistryError(f"{self.kind} policy {name!r} is not callable")
            return obj
        self._ensure_discovered()
        try:
            return self._factories[name.lower()]
        except KeyError:
            raise RegistryError(
                f"unknown {self.kind} policy {name!r}; registered: {', '.join(self.names()) or 'none'}"
            ) from None

    def create(self, name: str, **kwargs) -> T:
        return self.factory(name)(**kwargs)
