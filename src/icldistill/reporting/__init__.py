"""One report model (sections, tables, figures) with Markdown / HTML renderers, and the reports
built on it (traces, selector comparisons, ablations)."""

from icldistill.reporting.document import *  # noqa: F403
from icldistill.reporting.document import __all__ as _document_all
from icldistill.reporting.reports import *  # noqa: F403
from icldistill.reporting.reports import __all__ as _reports_all

__all__ = [*_document_all, *_reports_all]
