"""A tiny name -> object registry that fails loudly on duplicates and unknown names."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from mpu.errors import MPUError

T = TypeVar("T")


class Registry(Generic[T]):
    """One registry per kind of thing (architectures, methods, metrics).

    >>> METHODS = Registry("unlearning method")
    >>> @METHODS.register("GradAscent")
    ... class GradAscent: ...
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, *names: str) -> Callable[[T], T]:
        if not names:
            raise ValueError(f"register a {self.kind} under at least one name")

        def decorator(obj: T) -> T:
            for name in names:
                if name in self._items:
                    raise ValueError(f"duplicate {self.kind} name {name!r}")
                self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise MPUError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)
