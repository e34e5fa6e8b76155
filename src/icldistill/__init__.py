"""icldistill: in-context learning as one-step knowledge distillation, made measurable.

The math core (this package's top level) implements §1–5 of the framework (the Mathematics
page of the documentation, ``docs/math.md``) on tensors:

- :mod:`icldistill.core.kernels` — kernels on batches (Gaussian, Laplace, IMQ, linear, polynomial,
  softmax, the attention product kernel ``K_att``) and the median heuristic;
- :mod:`icldistill.core.mmd` — MMD estimators and the vectorised permutation test;
- :mod:`icldistill.core.decomposition` — attention-head segment decomposition, ``eta*``, the
  distilled weights ``W_0`` (dual and random-feature primal forms), the distillation gradient
  step;
- :mod:`icldistill.core.bounds` — bias of ``W_0`` vs MMD, Rademacher complexity, generalization
  bound;
- :mod:`icldistill.selection` — demonstration selectors behind one interface
  (``make_selector(name).fit(pool).select(targets, k)``): random, kNN, BM25, MMR, DPP, vote-k
  and the MMD family.

Built on it (imported explicitly): :mod:`icldistill.data` (labeled datasets from package
registries, user files), :mod:`icldistill.encoders.representations` (MiniLM, hidden-state and
attention key/value encoders), :mod:`icldistill.evaluation` (few-shot label scoring with prefix
reuse, metrics), :mod:`icldistill.evaluation.harness` (resumable evaluation grids),
:mod:`icldistill.models` (real models, tracing), :mod:`icldistill.reporting.reports`.
"""

from icldistill import _compat
from icldistill.core.bounds import (
    BiasResult,
    GeneralizationBound,
    RademacherComplexity,
    generalization_bound,
    rademacher_complexity,
    w0_bias,
)
from icldistill.core.decomposition import (
    DistillationStep,
    DualWeights,
    HeadDecomposition,
    PositiveRandomFeatures,
    PrimalWeights,
    RandomFeatureError,
    decompose_head,
    distillation_loss,
    distillation_step,
    random_feature_error,
)
from icldistill.core.kernels import KERNELS, Kernel, make_kernel, median_bandwidth, stack_kv
from icldistill.core.mmd import MMDTestResult, mmd, mmd_test
from icldistill.core.validation import InputError
from icldistill.selection import (
    SELECTORS,
    GreedySelection,
    Pool,
    Selection,
    Selector,
    greedy_mmd,
    make_selector,
    select_mmd,
)

__version__ = "0.1.0"

_compat.install()

__all__ = [
    "KERNELS",
    "SELECTORS",
    "BiasResult",
    "DistillationStep",
    "DualWeights",
    "GeneralizationBound",
    "GreedySelection",
    "HeadDecomposition",
    "InputError",
    "Kernel",
    "MMDTestResult",
    "Pool",
    "PositiveRandomFeatures",
    "PrimalWeights",
    "RademacherComplexity",
    "RandomFeatureError",
    "Selection",
    "Selector",
    "__version__",
    "decompose_head",
    "distillation_loss",
    "distillation_step",
    "generalization_bound",
    "greedy_mmd",
    "make_kernel",
    "make_selector",
    "median_bandwidth",
    "mmd",
    "mmd_test",
    "rademacher_complexity",
    "random_feature_error",
    "select_mmd",
    "stack_kv",
    "w0_bias",
]
