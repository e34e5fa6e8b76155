"""Evaluation grids on Ray: each unit a task on a worker that keeps its models loaded.

:func:`run_ray` runs the same units as :meth:`icldistill.evaluation.harness.Harness.run`, on a
local Ray instance or a cluster (``address``). Each worker is a Ray actor that holds one
:class:`~icldistill.evaluation.harness.Harness`, so a model is loaded once per worker and reused by
every unit the worker gets. The workers write through the harness's locked result store
(``results.jsonl``, ``predictions.jsonl``, ``partial/``, ``locks/``), exactly as local runs do:

- a finished unit is read back, never recomputed (the driver skips it before sending anything);
- a worker that dies mid-unit (killed, out of memory, node lost) is restarted by Ray and the unit
  retried up to ``max_retries`` times; the retry resumes from the unit's ``partial/`` file, and the
  unit's lock makes sure that no unit is recorded twice;
- the driver returns the results in the order of ``units``.

On a cluster, ``out_dir`` must be a folder every node sees at the same path (a shared filesystem,
as for any multi-process run of the harness). Install with ``pip install icldistill[ray]``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from icldistill.core.progress import progress_bar
from icldistill.core.validation import InputError
from icldistill.evaluation.harness import Harness, UnitResult, UnitSpec

__all__ = ["ray_available", "run_ray"]


def ray_available() -> bool:
    """Whether Ray can be imported (``pip install icldistill[ray]``)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError("the ray backend needs Ray: pip install 'icldistill[ray]'") from None
    return ray


class _UnitWorker:
    """One Ray actor: a harness on the shared output folder; its models stay loaded."""

    def __init__(self, out_dir: str, harness_kwargs: Mapping[str, Any], threads: int) -> None:
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        self.harness = Harness(out_dir, progress=False, **dict(harness_kwargs))

    def run(self, spec: UnitSpec) -> UnitResult:
        return self.harness.run_unit(spec)

    def pid(self) -> int:
        return os.getpid()


def _check(num_workers: int | None, cpus_per_worker: float, gpus_per_worker: float,
           max_retries: int) -> None:
    if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 1):
        raise InputError(f"num_workers must be a positive integer, got {num_workers!r}")
    if not cpus_per_worker > 0:
        raise InputError(f"cpus_per_worker must be positive, got {cpus_per_worker!r}")
    if gpus_per_worker < 0:
        raise InputError(f"gpus_per_worker must be >= 0, got {gpus_per_worker!r}")
    if not isinstance(max_retries, int) or max_retries < 0:
        raise InputError(f"max_retries must be an integer >= 0, got {max_retries!r}")


#: Harness arguments that :func:`run_ray` sets itself: the folder, and no progress output on
#: the workers (``progress=`` of :func:`run_ray` is the driver's bar).
_RESERVED = {"out_dir": "pass the folder as run_ray's out_dir",
             "progress": "pass progress= to run_ray itself (the workers never draw bars)"}


def _harness_kwargs(harness_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """``harness_kwargs`` checked against :class:`Harness`'s parameters, with every path
    argument made absolute on the driver (a worker on another node starts in another folder).
    """
    if harness_kwargs is not None and not isinstance(harness_kwargs, Mapping):
        raise InputError("harness_kwargs must be a dict of Harness keyword arguments, got "
                         f"{type(harness_kwargs).__name__}")
    kwargs = dict(harness_kwargs or {})
    params = inspect.signature(Harness.__init__).parameters
    for key in kwargs:
        if key in _RESERVED:
            raise InputError(f"harness_kwargs[{key!r}] is set by run_ray; {_RESERVED[key]}")
        if key == "self" or key not in params or params[key].kind is not params[key].KEYWORD_ONLY:
            raise InputError(f"harness_kwargs[{key!r}] is not a Harness argument; they are "
                             + ", ".join(n for n, q in params.items()
                                         if q.kind is q.KEYWORD_ONLY and n not in _RESERVED))
    for key, value in kwargs.items():
        # the path arguments (embedding_cache, selections_from, ...): annotated PathLike
        if value is not None and "PathLike" in str(params[key].annotation):
            if not isinstance(value, (str, os.PathLike)):
                raise InputError(f"harness_kwargs[{key!r}] must be a path, got "
                                 f"{type(value).__name__}")
            kwargs[key] = str(Path(value).expanduser().resolve())
    return kwargs


def _connect(ray: Any, address: str | None) -> None:
    if ray.is_initialized():
        return
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except ConnectionError as exc:
        raise InputError(f"cannot reach the Ray cluster at {address!r}: {exc}") from None


def _probe_device(device: str) -> str | None:
    """Run on a worker: why ``device`` cannot be used there (``None`` when it can)."""
    from icldistill.models.registry import resolve_device

    try:
        resolve_device(device)
    except InputError as exc:
        return str(exc)
    return None


def _check_worker_device(ray: Any, device: Any, cpus: float, gpus: float) -> None:
    """Ask one task with a worker's resources whether ``device`` exists there: the driver may
    have no GPU while its workers do, so the driver does not decide."""
    if device is None or str(device) == "cpu":
        return
    probe = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(_probe_device)
    why = ray.get(probe.remote(str(device)))
    if why is not None:
        raise InputError(f"on the Ray workers ({cpus:g} CPU(s), {gpus:g} GPU(s) each): {why}")


def _worker_count(ray: Any, num_workers: int | None, cpus: float, gpus: float, todo: int) -> int:
    res = ray.cluster_resources()
    if gpus > 0 and res.get("GPU", 0) < gpus:
        raise InputError(f"the Ray cluster has {res.get('GPU', 0):g} GPU(s); each worker asks "
                         f"for {gpus:g}")
    if num_workers is None:
        num_workers = int(res.get("CPU", 1) // cpus)
        if gpus > 0:
            num_workers = min(num_workers, int(res.get("GPU", 0) // gpus))
        if num_workers < 1:
            raise InputError(f"the Ray cluster has no room for one worker with {cpus:g} CPU(s)"
                             + (f" and {gpus:g} GPU(s)" if gpus else ""))
    return max(1, min(num_workers, todo))


# long: 12 lines of signature and 48 of NumPy docstring; the code is 30
def run_ray(
    units: Iterable[UnitSpec],
    out_dir: str | os.PathLike[str],
    *,
    harness_kwargs: Mapping[str, Any] | None = None,
    address: str | None = None,
    num_workers: int | None = None,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    max_retries: int = 3,
    progress: bool = True,
    on_result: Callable[[UnitResult], None] | None = None,
) -> list[UnitResult]:
    """Run evaluation units as Ray tasks; resumable exactly as :meth:`Harness.run`.

    Parameters
    ----------
    units : iterable of UnitSpec
        The grid (e.g. from :func:`~icldistill.evaluation.harness.unit_grid`).
    out_dir : path
        The harness folder, shared by the driver and every worker.
    harness_kwargs : mapping, optional
        Keyword arguments of :class:`~icldistill.evaluation.harness.Harness` for every worker
        (``tasks``, ``batch_size``, ``model_loader``, ``device``, ...; they are pickled to the
        workers). ``device`` is checked on a worker, not on the driver. Path arguments
        (``embedding_cache``, ``selections_from``) are made absolute here, on the driver, as
        ``out_dir`` is: on a cluster they must name folders every node sees at that path.
        ``out_dir`` and ``progress`` are run_ray's own (an :class:`InputError` here).
    address : str, optional
        Ray cluster address (``"auto"``, ``"ray://head:10001"``); ``None`` starts a local Ray
        instance unless one is already initialised in this process.
    num_workers : int, optional
        Number of workers (actors); default as many as the cluster's CPUs (and GPUs) allow,
        at most one per unit still to do.
    cpus_per_worker, gpus_per_worker : float
        Resources each worker reserves; its torch threads are ``int(cpus_per_worker)``.
        Use ``gpus_per_worker=1`` with a ``model_loader`` that puts the model on CUDA.
    max_retries : int
        How many times a worker that dies is restarted and its unit retried.
    progress : bool
        A progress bar over the units on stderr.
    on_result : callable, optional
        Called with each :class:`UnitResult` as it arrives (in completion order).

    Returns
    -------
    list of UnitResult
        One per unit, in the order of ``units``.

    Raises
    ------
    InputError
        Bad worker settings, a ``harness_kwargs`` key that is not a Harness argument or that
        run_ray sets itself (``out_dir``, ``progress``), a cluster without room for a worker,
        a device the workers lack.
    """
    _check(num_workers, cpus_per_worker, gpus_per_worker, max_retries)
    kwargs = _harness_kwargs(harness_kwargs)
    ray = _ray()
    # the driver only reads the grid and the finished units: it needs none of the workers'
    # devices (a CPU-only driver may run a GPU cluster's grid)
    local = Harness(out_dir, progress=progress,
                    **{k: v for k, v in kwargs.items() if k != "device"})
    units = list(units)
    keys = [u.key(local.task(u.task).fingerprint) for u in units]
    done = local.finished()
    todo = [u for u, k in zip(units, keys, strict=True) if k not in done]
    if todo:
        _connect(ray, address)
        n = _worker_count(ray, num_workers, cpus_per_worker, gpus_per_worker, len(todo))
        _check_worker_device(ray, kwargs.get("device"), cpus_per_worker, gpus_per_worker)
        actor = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                           max_restarts=max_retries, max_task_retries=max_retries)(_UnitWorker)
        workers = [actor.remote(str(Path(out_dir).resolve()), kwargs, int(cpus_per_worker))
                   for _ in range(n)]
        pool = ray.util.ActorPool(workers)
        todo.sort(key=lambda u: u.model)      # a worker tends to keep one model
        bar = progress_bar(total=len(todo), desc="units (ray)", unit="unit", enabled=progress,
                           leave=True)
        try:
            for result in pool.map_unordered(lambda w, u: w.run.remote(u), todo):
                if on_result is not None:
                    on_result(result)
                bar.update(1)
        finally:
            bar.close()
            for w in workers:
                ray.kill(w)
    done = local.finished()
    return [done[k] for k in keys if k in done]
