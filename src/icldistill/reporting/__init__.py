"""The reports icldistill writes from results: traces, selector comparisons, ablations.

They are built on the one report model, :mod:`icldistill.artifacts.document` (sections, tables,
figures; Markdown and HTML renderers), which is re-exported here with the figure helpers of
:mod:`icldistill.artifacts.figures`.
"""

from icldistill.artifacts.document import *  # noqa: F403
from icldistill.artifacts.document import __all__ as _document_all
from icldistill.reporting.reports import *  # noqa: F403
from icldistill.reporting.reports import __all__ as _reports_all

__all__ = [*_document_all, *_reports_all]
