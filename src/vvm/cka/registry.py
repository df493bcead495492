"""Names for classes: the registry that kernels (:mod:`vvm.cka.kernels`) and similarity measures
(:mod:`vvm.cka.measures.base`) are found in by the name a config gives (``cka.kernel=rbf``, ``measures=[rsa]``)."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(dict[str, type[T]], Generic[T]):
    """``{name: class}``, filled by :meth:`register` (a class decorator: the class's ``name`` is its key).

    ``kind`` names what it holds in errors; ``unknown`` is the error for a name it does not hold, with
    ``{kind}``, ``{name}`` and ``{known}`` (the names it holds, in order of registration) filled in."""

    def __init__(self, kind: str, unknown: str = "{kind} {name!r} is not known: use one of {known}") -> None:
        super().__init__()
        self.kind, self.unknown = kind, unknown

    def register(self, cls: type[T]) -> type[T]:
        name = getattr(cls, "name", "")
        if not name or name in self:
            raise ValueError(f"{self.kind} {cls.__name__} needs a name that is not taken yet (got {name!r})")
        self[name] = cls
        return cls

    def check(self, name: str) -> None:
        """A ``ValueError`` naming the known names when ``name`` is not one of them."""
        if name not in self:
            raise ValueError(self.unknown.format(kind=self.kind, name=name, known=", ".join(self)))

    def make(self, name: str, *args: Any, **kwargs: Any) -> T:
        """The class registered as ``name``, called with the arguments."""
        self.check(name)
        return self[name](*args, **kwargs)


__all__ = ["Registry"]
