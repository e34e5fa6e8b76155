"""transformers' and huggingface_hub's progress bars drawn by the package's one progress helper
(:func:`icldistill.core.progress.progress_bar`), for the time a model or encoder loads."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from icldistill.core.progress import progress_bar, quiet

__all__ = ["transformers_progress"]


def _transformers_hook(factory: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``transformers.utils.logging.set_tqdm_hook``: transformers' bars through
    :func:`progress_bar` (its placeholder when its bars are off stays as it is)."""
    if getattr(factory, "__name__", "") == "EmptyTqdm":
        return factory(*args, **kwargs)
    kwargs = dict(kwargs)
    for name, value in zip(("iterable", "desc", "total"), args, strict=False):
        kwargs[name] = value
    return progress_bar(kwargs.pop("iterable", None), **kwargs)


@contextlib.contextmanager
def transformers_progress(enabled: bool) -> Iterator[None]:
    """transformers' and huggingface_hub's progress bars while the block runs (loading a
    model): drawn by :func:`progress_bar` (plain lines off a terminal), off when ``enabled`` is
    false or inside :func:`quiet_scope`, where transformers also logs errors only. Restored
    afterwards."""
    from transformers.utils import logging as hf_logging

    show = enabled and not quiet()
    was_on = hf_logging.is_progress_bar_enabled()
    set_hook = getattr(hf_logging, "set_tqdm_hook", None)
    old_hook = getattr(hf_logging, "_tqdm_hook", None)
    verbosity = hf_logging.get_verbosity()
    if not show and was_on:
        hf_logging.disable_progress_bar()
    if set_hook is not None:
        set_hook(_transformers_hook)
    if quiet():
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        if quiet():
            hf_logging.set_verbosity(verbosity)
        if set_hook is not None:
            set_hook(old_hook)
        if not show and was_on:
            hf_logging.enable_progress_bar()
