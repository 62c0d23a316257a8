"""Name -> function registries for advantage estimators and policy losses.

Adding one is a decorated pure function in ``advantages.py`` or ``policy_losses.py``::

    @ADVANTAGE_ESTIMATORS.register("my_estimator")
    def my_estimator(inputs: AdvantageInputs) -> torch.Tensor: ...

and the name becomes valid for ``algorithm.advantage_estimator`` in YAML.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    """A named set of functions with errors that list the valid names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def add(fn: F) -> F:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = fn
            return fn

        return add

    def names(self) -> list[str]:
        _load_builtins()
        return sorted(self._entries)

    def check(self, name: str, key: str) -> None:
        """Raise a ValueError naming ``key``, the allowed values and the closest one when ``name`` is unknown."""
        if name not in self.names():
            close = difflib.get_close_matches(str(name), self.names(), n=1)
            raise ValueError(f"{key}: unknown {self.kind} {name!r}; allowed values: {', '.join(self.names())}"
                             + (f"; did you mean {close[0]}?" if close else ""))

    def __getitem__(self, name: str) -> F:
        self.check(name, self.kind)
        return self._entries[name]


ADVANTAGE_ESTIMATORS: Registry = Registry("advantage estimator")
POLICY_LOSSES: Registry = Registry("policy loss")


def _load_builtins() -> None:
    # The built-in entries register themselves on import; importing here keeps the registry
    # complete whichever module the caller imported first.
    from waltzlit.algorithms import advantages, policy_losses  # noqa: F401
