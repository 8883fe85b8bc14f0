"""Serving: the one inference path (`Recommender`), batch recommendations and the HTTP service.

The names below load `slmrec.serve.recommender` (torch, transformers, peft: seconds) on first use, so a
command that needs only a light module of this package (history, answer log) does not pay for them.
"""

from __future__ import annotations

import importlib

__all__ = ["ANONYMOUS", "Answer", "EmptyHistory", "Query", "Recommender", "UnknownUser"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("slmrec.serve.recommender"), name)
    raise AttributeError(f"module 'slmrec.serve' has no attribute {name!r}")
