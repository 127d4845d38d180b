"""One hook that runs a list of independent jobs: a local process pool, SLURM arrays (submitit), Ray, or your executor.

Every multi-run experiment (``reproduce``, and any sweep built the same way)
is a list of picklable items and one top-level function; :func:`map_jobs` runs
``fn`` on each item and returns the results in order. The engines are the
existing ones, never a home-made scheduler:

- ``"local"`` (default): in this process one after the other when ``jobs=1``,
  else a ``concurrent.futures.ProcessPoolExecutor`` (spawn) with ``jobs`` workers. Ctrl-C stops it
  within seconds: queued jobs are cancelled and never start, and each running job is interrupted where
  it is (``KeyboardInterrupt`` in the worker: its ``finally`` blocks run, so a training run leaves a
  folder that resumes), then its worker exits (:data:`STOP_GRACE_S` at most before it is killed);
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

import functools
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Sequence

#: the executors named by a string
EXECUTORS = ("local", "submitit", "ray")
#: seconds a local worker has, after Ctrl-C, to stop its job where it is before it is killed
STOP_GRACE_S = 20.0
#: exit status of a local worker whose job was stopped by Ctrl-C
_STOPPED = 130


def _worker_start() -> None:
    """In each local worker: Ctrl-C at the terminal reaches the whole process group; the parent decides (it
    cancels the queue and then stops each running job with SIGTERM), so a worker never starts another job."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def stop(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the worker at once
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def _job(fn: Callable[[Any], Any], x: Any) -> Any:
    """One job in a local worker; stopped, it ends the worker (after the job's own cleanup ran)."""
    try:
        return fn(x)
    except KeyboardInterrupt:
        try:  # what a normal exit does first: unlink the named semaphores this worker made (tqdm's lock)
            from multiprocessing import util

            util._run_finalizers(0)
        except Exception:  # noqa: BLE001 - best effort: the worker ends either way
            pass
        os._exit(_STOPPED)  # never pick up a queued job after a stop


def _local_pool(fn: Callable[[Any], Any], items: list[Any], jobs: int) -> list[Any]:
    """``fn`` over ``items`` in ``jobs`` spawned processes, results in order.

    A job's error is raised once every job has ended (the others finish, as with ``Executor.map``). Ctrl-C
    cancels the queue and stops the running jobs where they are (:func:`_stop`), then is raised.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, wait

    ex = ProcessPoolExecutor(max_workers=min(jobs, len(items)), mp_context=mp.get_context("spawn"), initializer=_worker_start)
    futures = [ex.submit(functools.partial(_job, fn), x) for x in items]
    try:
        wait(futures)
    except BaseException:  # Ctrl-C (KeyboardInterrupt), or the process asked to exit
        _stop(ex, futures)
        raise
    ex.shutdown(wait=True)
    return [f.result() for f in futures]


def _stop(ex: Any, futures: list[Any]) -> None:
    """Nothing queued starts; each running job gets SIGTERM (a KeyboardInterrupt where it is, its cleanup runs),
    and a worker still alive after :data:`STOP_GRACE_S` is killed.

    Workers end after a stopped job (:func:`_job`) and the pool does not replace them, so queued jobs have no
    one to run them: the pool marks itself broken and fails their futures (they are not cancelled first:
    Python 3.11's pool then fails on the cancelled ones in its own thread).
    """
    procs = list(getattr(ex, "_processes", {}).values())  # CPython's pool keeps its workers there
    for p in procs:
        if p.is_alive():
            with _suppress():
                os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()
    ex.shutdown(wait=True)  # its workers are gone: this joins its own thread, which fails the queued futures


def _suppress() -> Any:
    import contextlib

    return contextlib.suppress(ProcessLookupError, PermissionError)


def check_executor(executor: Any, jobs: int = 1) -> None:
    """Raise a one-line error for an executor or ``jobs`` that cannot run, before any work starts."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a whole number >= 1 (runs at a time in local processes), got {jobs!r}")
    if isinstance(executor, str):
        if executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {', '.join(EXECUTORS)} or an object with map(fn, items), got {executor!r}")
        from .errors import require  # (imports torch: not at the top, so a local worker starts without it)

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
            return _local_pool(fn, items, jobs)
        return [fn(x) for x in items]
    if not items:
        return []
    from .errors import require

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
