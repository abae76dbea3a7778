"""Renamed keyword arguments: the old name keeps working for a while and says what replaced it."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def renamed_arguments(**old_to_new: str) -> Callable[[F], F]:
    """Accept each old keyword as an alias of its new name, with a :class:`FutureWarning`.

    Passing both names at once is a ``TypeError``: which one should win would be a guess.

    Examples
    --------
    >>> @renamed_arguments(n_top="n_top_genes")
    ... def f(*, n_top_genes=1):
    ...     return n_top_genes
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     f(n_top=3)
    3

    """

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in old_to_new.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise TypeError(
                        f"{func.__name__}() got both {old}= and its new name {new}=; pass {new}=."
                    )
                warnings.warn(
                    f"{func.__name__}({old}=...) is deprecated and will be removed; use {new}= instead.",
                    FutureWarning,
                    stacklevel=2,
                )
                kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
