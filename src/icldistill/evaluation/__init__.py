"""Few-shot scoring with prefix reuse, metrics, and resumable evaluation grids."""

from icldistill.evaluation.harness import *  # noqa: F403
from icldistill.evaluation.harness import __all__ as _harness_all
from icldistill.evaluation.precision import *  # noqa: F403
from icldistill.evaluation.precision import __all__ as _precision_all
from icldistill.evaluation.scoring import *  # noqa: F403
from icldistill.evaluation.scoring import __all__ as _scoring_all
from icldistill.evaluation.status import *  # noqa: F403
from icldistill.evaluation.status import __all__ as _status_all

__all__ = [*_scoring_all, *_harness_all, *_status_all, *_precision_all]
