"""Quiet output: progress bars that work in terminals and notebooks, third-party chatter kept at debug level.

A run prints its own progress bar and a short summary. What the libraries underneath announce on every
run (Lightning's device lines and adverts, deprecation notices of their own internals, weight-loading
bars) is re-logged on the ``comtip_sc`` logger at DEBUG, so ``logging.getLogger("comtip_sc").setLevel
(logging.DEBUG)`` (``comtip -v``) still shows it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import warnings
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("comtip_sc.third_party")

#: Loggers whose INFO records are announcements of the training library, not results.
_CHATTY = ("lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning")
#: Packages whose own deprecation and future warnings concern their internals, not the user's code.
_THIRD_PARTY = (
    "lightning",
    "lightning_fabric",
    "pytorch_lightning",
    "torch",
    "timm",
    "transformers",
    "sentence_transformers",
)


def quiet_tqdm_auto() -> None:
    """Import ``tqdm.auto`` once without its "IProgress not found" warning when ``ipywidgets`` is missing.

    timm, Lightning and squidpy import ``tqdm.auto`` when they load; in a Jupyter kernel without
    ``ipywidgets`` it warns and falls back to the text bar. Imported here first, it falls back silently.
    """
    import sys

    if "tqdm.auto" in sys.modules or importlib.util.find_spec("ipywidgets") is not None:
        return
    from tqdm import TqdmWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)
        import tqdm.auto  # noqa: F401


def tqdm(*args: Any, **kwargs: Any):
    """A progress bar: the notebook widget when ``ipywidgets`` is installed, else the plain text bar.

    ``tqdm.auto`` alone picks the widget in any Jupyter kernel and, without ``ipywidgets``, prints
    "IProgress not found" instead of a bar.

    Examples
    --------
    >>> sum(tqdm(range(3), disable=True))
    3

    """
    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm as bar
    else:
        from tqdm import tqdm as bar
    return bar(*args, **kwargs)


class _ToDebug(logging.Handler):
    """Sole handler of a chatty logger: INFO and below go to :data:`log` at DEBUG, the rest as before."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger, self.handlers, self.propagate = logger, list(logger.handlers), logger.propagate

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno <= logging.INFO:
            log.debug("%s: %s", record.name, record.getMessage())
            return
        for handler in self.handlers:
            if record.levelno >= handler.level:
                handler.handle(record)
        if self.propagate and self.logger.parent is not None:
            self.logger.parent.handle(record)

    def __enter__(self) -> _ToDebug:
        self.logger.handlers, self.logger.propagate = [self], False
        return self

    def __exit__(self, *exc: Any) -> None:
        self.logger.handlers, self.logger.propagate = self.handlers, self.propagate


def _is_third_party(category: type[Warning], filename: str) -> bool:
    if not issubclass(category, DeprecationWarning | FutureWarning):
        return False
    parts = filename.replace("\\", "/").split("/")
    return any(p in _THIRD_PARTY for p in parts)


@contextlib.contextmanager
def third_party_quiet() -> Iterator[None]:
    """Within the block, third-party announcements go to the ``comtip_sc`` log at DEBUG (see module doc).

    Warnings that concern the user (anything but a library's own deprecation notices) still show. Also a
    decorator (``@third_party_quiet()``), as every ``contextlib.contextmanager`` is.

    Examples
    --------
    >>> with third_party_quiet():
    ...     logging.getLogger("lightning.pytorch").info("GPU available: False")

    """
    with contextlib.ExitStack() as stack, warnings.catch_warnings():
        for name in _CHATTY:
            stack.enter_context(_ToDebug(logging.getLogger(name)))
        shown = warnings.showwarning

        def route(message, category, filename, lineno, file=None, line=None):
            if _is_third_party(category, filename):
                log.debug("%s:%s: %s: %s", filename, lineno, category.__name__, message)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = route
        yield


def progress_callbacks(callbacks: list, enabled: bool, refresh_rate: int = 1) -> list:
    """``callbacks`` plus Lightning's tqdm progress bar when a bar is wanted and none is given.

    Left to itself Lightning picks its rich bar when ``rich`` is installed, which in Jupyter without
    ``ipywidgets`` warns instead of drawing; its tqdm bar falls back to plain text there. The bar reads
    the step's loss back to the host each time it redraws: every ``refresh_rate`` steps.
    """
    from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar

    if not enabled or any(isinstance(cb, ProgressBar) for cb in callbacks):
        return list(callbacks)
    return [*callbacks, TQDMProgressBar(refresh_rate=refresh_rate)]
