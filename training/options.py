"""Options a user gives as a dict (a workflow's train section, ``--model-option``) read into a config dataclass."""

from __future__ import annotations

from dataclasses import fields
from typing import TypeVar

from cslr_pipe.features.errors import InputError

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
