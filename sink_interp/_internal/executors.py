"""One hook that runs a list of independent jobs: a local process pool, SLURM arrays (submitit), Ray, or your executor.

Every multi-run experiment (``reproduce``, and any sweep built the same way)
is a list of picklable items and one top-level function; :func:`map_jobs` runs
``fn`` on each item and returns the results in order. The engines are the
existing ones, never a home-made scheduler:

- ``"local"`` (default): in this process one after the other when ``jobs=1``,
  else a ``concurrent.futures.ProcessPoolExecutor`` (spawn) with ``jobs`` workers;
- ``"submitit"``: ``submitit.AutoExecutor(folder).map_array`` (one SLURM array;
  ``pip install 'sink_interp[slurm]'``), ``options`` go to ``update_parameters``
  (``slurm_partition``, ``timeout_min``, ``gpus_per_node``, ...);
- ``"ray"``: ``ray.remote(fn).options(**options)`` on the cluster ``ray.init()``
  finds (``RAY_ADDRESS``; ``pip install 'sink_interp[ray]'``);
- an object with ``map_array(fn, items)`` (a submitit executor) or
  ``map(fn, items)`` (any ``concurrent.futures.Executor``, ``multiprocessing.Pool``, ...).

    >>> map_jobs(abs, [-1, 2, -3])
    [1, 2, 3]
    >>> from concurrent.futures import ThreadPoolExecutor
    >>> with ThreadPoolExecutor(2) as ex:
    ...     map_jobs(abs, [-1, 2], executor=ex)
    [1, 2]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import require

#: the executors named by a string
EXECUTORS = ("local", "submitit", "ray")


def check_executor(executor: Any, jobs: int = 1) -> None:
    """Raise a one-line error for an executor or ``jobs`` that cannot run, before any work starts."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a whole number >= 1 (runs at a time in local processes), got {jobs!r}")
    if isinstance(executor, str):
        if executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {', '.join(EXECUTORS)} or an object with map(fn, items), got {executor!r}")
        if executor == "submitit":
            require("submitit", "'sink_interp[slurm]'", "executor='submitit' (SLURM arrays)")
        elif executor == "ray":
            require("ray", "'sink_interp[ray]'", "executor='ray'")
    elif not (callable(getattr(executor, "map_array", None)) or callable(getattr(executor, "map", None))):
        raise TypeError(
            f"executor must be 'local', 'submitit', 'ray' or an object with map(fn, items) such as a "
            f"concurrent.futures.Executor; got a {type(executor).__name__}"
        )


def map_jobs(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    *,
    executor: Any = "local",
    jobs: int = 1,
    options: dict[str, Any] | None = None,
    folder: str | os.PathLike[str] | None = None,
) -> list[Any]:
    """``[fn(x) for x in items]`` on the chosen executor (see the module docstring), results in order.

    ``fn`` must be a top-level function (or a ``functools.partial`` of one) so
    that other processes can import it. ``folder`` is where submitit keeps its
    logs and pickles (default ``./submitit``). ``options`` is refused for the
    local executor, which has none.
    """
    check_executor(executor, jobs)
    items = list(items)
    options = dict(options or {})
    if executor == "local":
        if options:
            raise ValueError(f"options {sorted(options)} apply to executor='submitit' or 'ray', not 'local'; fix: drop them")
        if jobs > 1 and len(items) > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=min(jobs, len(items)), mp_context=mp.get_context("spawn")) as ex:
                return list(ex.map(fn, items))
        return [fn(x) for x in items]
    if not items:
        return []
    if executor == "submitit":
        submitit = require("submitit", "'sink_interp[slurm]'", "executor='submitit' (SLURM arrays)")
        cluster = options.pop("cluster", None)  # "local" or "debug" run without SLURM (submitit's own test executors)
        kw = {"cluster": cluster} if cluster is not None else {}
        executor = submitit.AutoExecutor(folder=str(Path(folder or "submitit")), **kw)
        if options:
            executor.update_parameters(**options)
        options = {}
    elif executor == "ray":
        ray = require("ray", "'sink_interp[ray]'", "executor='ray'")
        if not ray.is_initialized():
            ray.init()
        remote = ray.remote(fn)
        if options:
            remote = remote.options(**options)
        return list(ray.get([remote.remote(x) for x in items]))
    if options:
        raise ValueError(f"options {sorted(options)} apply to executor='submitit' or 'ray'; fix: configure your executor object")
    if callable(getattr(executor, "map_array", None)):  # submitit: one array job, then wait for every task
        return [j.result() for j in executor.map_array(fn, items)]
    return list(executor.map(fn, items))


__all__ = ["EXECUTORS", "check_executor", "map_jobs"]
