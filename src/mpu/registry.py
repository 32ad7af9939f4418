"""A tiny name -> object registry that fails loudly on duplicates and unknown names.

Names are matched as users type them: case-insensitively and ignoring ``_`` and ``-`` (so ``npo``,
``grad_ascent`` and ``GRAD-ASCENT`` find ``NPO`` and ``GradAscent``). Because of that, two names that
differ only by case, ``_`` or ``-`` are duplicates. An unknown name is an :class:`~mpu.errors.MPUError`
that suggests the closest registered name (:func:`difflib.get_close_matches`) and lists them all.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from mpu.errors import MPUError

T = TypeVar("T")


def normalize(name: str) -> str:
    """The form names are compared in: case-folded, without ``_`` and ``-`` (``Grad_Ascent`` -> ``gradascent``)."""
    return name.casefold().replace("_", "").replace("-", "")


class Registry(Generic[T]):
    """One registry per kind of thing (architectures, methods, metrics).

    >>> METHODS = Registry("unlearning method")
    >>> @METHODS.register("GradAscent")
    ... class GradAscent: ...
    >>> METHODS.canonical("grad_ascent")
    'GradAscent'
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}   # registered name -> object
        self._keys: dict[str, str] = {}  # normalized name -> registered name

    def register(self, *names: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under every name in ``names``.

        Raises ``ValueError`` (a programming error, at import time) when no name is given, a name is
        not a non-empty string, or a name equals an already registered one up to case, ``_`` and ``-``.
        """
        if not names:
            raise ValueError(f"register a {self.kind} under at least one name")
        for name in names:
            if not isinstance(name, str) or not normalize(name):
                raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def decorator(obj: T) -> T:
            keys = [normalize(name) for name in names]
            for name, key in zip(names, keys):
                if key in self._keys:
                    taken = self._keys[key]
                    same = "" if taken == name else f" (same as {taken!r} up to case, '_' and '-')"
                    raise ValueError(f"duplicate {self.kind} name {name!r}{same}")
            if len(set(keys)) != len(keys):
                raise ValueError(f"duplicate {self.kind} names among {names!r} (up to case, '_' and '-')")
            for name, key in zip(names, keys):
                self._items[name] = obj
                self._keys[key] = name
            return obj

        return decorator

    def canonical(self, name: str) -> str:
        """The registered spelling of ``name`` (``npo`` -> ``NPO``).

        Raises ``MPUError``: ``unknown <kind> 'NPOO'; did you mean 'NPO'? known: ...`` (the suggestion
        only when a registered name is close enough).
        """
        key = normalize(name) if isinstance(name, str) else None
        if key is not None and key in self._keys:
            return self._keys[key]
        hint = ""
        if key:
            close = difflib.get_close_matches(key, list(self._keys), n=1, cutoff=0.6)
            if close:
                hint = f"; did you mean {self._keys[close[0]]!r}?"
        known = ", ".join(self.names()) or "(none)"
        raise MPUError(f"unknown {self.kind} {name!r}{hint} known: {known}" if hint
                       else f"unknown {self.kind} {name!r}; known: {known}")

    def get(self, name: str) -> T:
        """The object registered as ``name`` (matched as :meth:`canonical` does); ``MPUError`` if none."""
        return self._items[self.canonical(name)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalize(name) in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def names(self) -> list[str]:
        """The registered names, as registered, sorted."""
        return sorted(self._items)
