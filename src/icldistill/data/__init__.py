"""Labeled datasets (registry specs, fetching, user files, splits) and prompt formats."""

from icldistill.data.datasets import *  # noqa: F403
from icldistill.data.datasets import __all__ as _datasets_all
from icldistill.data.prompts import *  # noqa: F403
from icldistill.data.prompts import __all__ as _prompts_all

__all__ = [*_datasets_all, *_prompts_all]
