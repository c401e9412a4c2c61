"""Named factories where users plug things in (pose and flow backends, backbones, models), and the
options a user gives them, read into a config dataclass (a workflow's train section, ``--model-option``)."""

from __future__ import annotations

import importlib
from dataclasses import fields
from typing import Callable, TypeVar

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


Config = TypeVar("Config")


def checked_options(name: str, config_class: type[Config], options: dict, **derived) -> Config:
    """``config_class(**options, **derived)``; a key of ``options`` that is no field of the class, or one
    of the ``derived`` fields the caller fills in itself (sizes read off the data), is an InputError
    listing the known keys. ``name`` says whose options they are ("training", "ctc", ...)."""
    known = sorted(f.name for f in fields(config_class) if f.name not in derived)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise InputError(f"unknown {name} option(s): {', '.join(unknown)}; known: {', '.join(known)}")
    return config_class(**options, **derived)
