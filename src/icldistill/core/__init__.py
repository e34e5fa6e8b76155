"""The math core: the framework's identities on tensors (numpy / torch only).

- :mod:`~icldistill.core.kernels` — kernels on batches and the attention kernel ``K_att``;
- :mod:`~icldistill.core.mmd` — MMD estimators and the permutation test;
- :mod:`~icldistill.core.decomposition` — attention-head decomposition, ``eta*``, ``W_0``;
- :mod:`~icldistill.core.bounds` — bias vs MMD, Rademacher complexity, generalization bound;
- :mod:`~icldistill.core.metrics` — accuracy and macro-F1, also on bootstrap resamples;
- :mod:`~icldistill.core.stats` — paired tests (McNemar, sign flips, bootstrap CIs, Holm);
- :mod:`~icldistill.core.validation` — the shared argument checks and :class:`InputError`;
- :mod:`~icldistill.core.progress`, :mod:`~icldistill.core.util` — progress bars, small helpers.

Nothing here imports ``transformers`` or any other layer of the package.
"""
