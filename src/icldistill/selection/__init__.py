"""Demonstration selectors behind one interface: ``make_selector(name).fit(pool).select(...)``."""

from icldistill.selection.selectors import *  # noqa: F403
from icldistill.selection.selectors import __all__ as __all__
