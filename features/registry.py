"""Named factories where users plug things in: pose backends, flow backends, backbones."""

from __future__ import annotations

import importlib
from typing import Callable

from cslr_pipe.features.errors import InputError


class Registry:
    """Built-ins given by import path ``module:attribute`` (imported on first use, so their
    dependencies load only when needed) and factories users register at run time."""

    def __init__(self, kind: str, builtin: dict[str, str]):
        self.kind = kind
        self.builtin = dict(builtin)
        self.registered: dict[str, Callable] = {}

    def register(self, name: str, factory: Callable) -> None:
        self.registered[name] = factory

    def unregister(self, name: str) -> None:
        self.registered.pop(name, None)

    def names(self) -> list[str]:
        return sorted({*self.builtin, *self.registered})

    def factory(self, name: str) -> Callable:
        """The class (or factory) registered as ``name``; ValueError for an unknown name."""
        if name in self.registered:
            return self.registered[name]
        if name in self.builtin:
            module, _, attribute = self.builtin[name].partition(":")
            return getattr(importlib.import_module(module), attribute)
        raise InputError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
