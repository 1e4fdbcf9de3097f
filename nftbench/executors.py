"""Where stages run: in this process, in a local process pool, or on a Ray cluster.

Every executor runs :class:`~nftbench.worker.StageWorker` jobs and hands back a
``concurrent.futures.Future`` of the job's :class:`~nftbench.worker.StageLog`; :func:`schedule`
walks the DAG over any of them. A job starts only when the jobs it reads are done, so the shared
stages (the base model, each release) run once, before the cells that need them, and cells whose
release is ready run while other releases are still being built. Claims in the store (see
:mod:`nftbench.store`) keep two workers, or two runs, from computing one stage at once.

Every stage runs with the config's ``threads`` torch threads, whichever executor runs it: on
some CPUs the thread count changes float reductions, and a 1,500-step pre-training amplifies
that into a different model, so an executor must never pick its own count.

* ``sequential`` (default): in this process.
* ``pool``: ``--workers N`` spawned processes (one GPU each where there are GPUs). A stage whose
  worker dies (the OOM killer) takes the pool down with every stage it was running; each of
  those is run again, alone, on a fresh pool, and fails only if it kills its worker again.
* ``ray``: one actor per GPU of the cluster (or ``--workers`` actors), each reserving ``threads``
  CPUs; a dead actor is replaced and its stage retried alone the same way. ``--address`` joins
  an existing cluster; without it a local Ray instance is started. Every node must have
  nftbench installed and see the store at the same path (a shared filesystem).
"""

from __future__ import annotations

import concurrent.futures as cf
import heapq
import logging
import multiprocessing
import os
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from nftbench.records import Job, StageLog
from nftbench.threads import MARKER, POLICY_VARIABLES
from nftbench.worker import StageWorker, WorkerSpec

log = logging.getLogger("nftbench")
EXECUTORS = ("sequential", "pool", "ray")
class ExecutorError(RuntimeError):
    """An executor that cannot start (Ray not installed, a cluster that cannot be joined)."""


WORKER_DIED = ("the worker process running this stage died twice (killed, or out of memory): "
               "{err}")


class Executor(Protocol):
    slots: int  # jobs that run at once

    def submit(self, job: Job) -> cf.Future[StageLog]: ...

    def close(self) -> None: ...


class SequentialExecutor:
    """Runs each job in this process as it is submitted."""

    slots = 1

    def __init__(self, worker: StageWorker) -> None:
        self.worker = worker

    def submit(self, job: Job) -> cf.Future[StageLog]:
        future: cf.Future[StageLog] = cf.Future()
        future.set_result(self.worker.run(job))
        return future

    def close(self) -> None:
        pass


# The pool process's worker, built once by the initializer (a process pool has no actors).
_POOL_WORKER: StageWorker | None = None


def _init_pool_worker(spec: WorkerSpec, gpus: Any, ready: Any) -> None:
    global _POOL_WORKER
    if gpus is not None:  # one GPU per worker, before anything initializes CUDA
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())
    logging.basicConfig(level=logging.WARNING, format=f"[worker {os.getpid()}] %(message)s")
    _POOL_WORKER = StageWorker(spec)
    ready.wait()  # until every worker is up (see PoolExecutor._start)


def _noop() -> int:
    return os.getpid()


def _run_in_pool(job: Job) -> StageLog:
    assert _POOL_WORKER is not None, "pool worker not initialized"
    return _POOL_WORKER.run(job)


class PoolExecutor:
    """``workers`` spawned processes on this machine."""

    def __init__(self, spec: WorkerSpec, workers: int) -> None:
        import torch

        self.spec, self.slots = spec, workers
        self._ctx = multiprocessing.get_context("spawn")  # fork after torch init is unsafe
        self._n_gpus = torch.cuda.device_count()
        if self._n_gpus and workers > self._n_gpus:
            log.warning("%d workers share %d GPUs", workers, self._n_gpus)
        self._pool = self._start()

    def _start(self) -> cf.ProcessPoolExecutor:
        """Start every worker before the first job: a process pool spawns workers only when a
        job finds none idle, and a worker takes seconds to import torch and build its matrix,
        so short jobs would all run on the first one. Each worker's initializer waits at a
        barrier, so ``slots`` no-op jobs make the pool spawn all of them."""
        ready = self._ctx.Barrier(self.slots)
        gpus = None
        if self._n_gpus:  # each worker takes one GPU id
            gpus = self._ctx.Queue()
            for i in range(self.slots):
                gpus.put(i % self._n_gpus)
        pool = cf.ProcessPoolExecutor(self.slots, mp_context=self._ctx,
                                      initializer=_init_pool_worker,
                                      initargs=(self.spec, gpus, ready))
        pids = {f.result() for f in [pool.submit(_noop) for _ in range(self.slots)]}
        log.info("pool: %d workers ready (pids %s)", len(pids), sorted(pids))
        return pool

    def submit(self, job: Job) -> cf.Future[StageLog]:
        try:
            return self._pool.submit(_run_in_pool, job)
        except cf.process.BrokenProcessPool:  # a worker died earlier: start a fresh pool
            log.warning("pool: a worker died; starting a new pool")
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._start()
            return self._pool.submit(_run_in_pool, job)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class StageActor:
    """A Ray actor holding one StageWorker (built once, reused for every job it runs)."""

    def __init__(self, spec: WorkerSpec) -> None:
        logging.basicConfig(level=logging.WARNING)
        self.worker = StageWorker(spec)

    def run(self, job: Job) -> StageLog:
        return self.worker.run(job)


class RayExecutor:
    """One actor per GPU of the cluster, or ``workers`` actors; each job on an idle actor."""

    def __init__(self, spec: WorkerSpec, workers: int | None, address: str | None) -> None:
        try:
            import ray
        except ImportError:
            raise ExecutorError("--executor ray needs Ray: pip install 'nftbench[ray]'") from None
        self.ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
            if address is None:
                kwargs["num_cpus"] = os.cpu_count()
            try:
                ray.init(address=address, **kwargs)
            except Exception as err:  # ConnectionError, an auth failure, a bad address...
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                raise ExecutorError(f"cannot start {where}: {type(err).__name__}: {err}") \
                    from None
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        threads = spec.threads or 1
        self.slots = workers or gpus or max(1, cpus // threads)
        # Reserve each actor's share of the cluster for placement (the stage still runs with
        # the config's threads): actors that asked for more CPUs than exist would never start.
        reserve = min(float(threads), cpus / self.slots)
        if reserve < threads:
            log.warning("ray: %d actors x %d threads on %d CPUs: the actors will wait on each "
                        "other", self.slots, threads, cpus)
        # the driver's OpenMP wait policy, also for actors on a cluster that did not inherit
        # this process's environment (nftbench/threads.py)
        policy = {v: os.environ[v] for v in (*POLICY_VARIABLES, MARKER) if v in os.environ}
        # Ray starts workers at niceness 15 so that its own daemons keep the CPU; a stage actor
        # is the compute and runs at the niceness of everything else (as a pool worker does):
        # at 15, any busy process on the machine starved it for minutes
        env = {**policy, "RAY_worker_niceness": "0"}
        self._actor_cls = ray.remote(num_cpus=reserve, num_gpus=1 if gpus else 0,
                                     runtime_env={"env_vars": env})(StageActor)
        self._spec = spec
        self._actors = [self._actor_cls.remote(spec) for _ in range(self.slots)]
        self._busy: dict[int, cf.Future[StageLog]] = {}
        self._lock = threading.Lock()
        log.info("ray: %d actors (%d CPUs, %d GPUs in the cluster; %d threads, %s GPU each)",
                 self.slots, cpus, gpus, threads, 1 if gpus else 0)

    def submit(self, job: Job) -> cf.Future[StageLog]:
        with self._lock:
            free = [i for i in range(self.slots)
                    if i not in self._busy or self._busy[i].done()]
            if not free:
                raise RuntimeError("ray: no idle actor (the scheduler over-submitted)")
            i = free[0]
            future = self._actors[i].run.remote(job).future()
            self._busy[i] = future
        future.add_done_callback(lambda f, i=i: self._replace_if_dead(i, f))
        return future

    def _replace_if_dead(self, i: int, future: cf.Future[StageLog]) -> None:
        if isinstance(future.exception(), self.ray.exceptions.RayActorError):
            log.warning("ray: actor %d died; starting a new one", i)
            with self._lock:
                self._actors[i] = self._actor_cls.remote(self._spec)

    def close(self) -> None:
        for actor in self._actors:
            self.ray.kill(actor)
        if self._started:
            self.ray.shutdown()


def schedule(jobs: Iterable[Job], executor: Executor,
             on_start: Callable[[Job], None] = lambda job: None,
             on_done: Callable[[Job, StageLog], None] = lambda job, log: None,
             skip: Callable[[Job], StageLog | None] = lambda job: None,
             busy: Callable[[Job], bool] = lambda job: False) -> dict[str, StageLog]:
    """Run ``jobs`` (a DAG) on ``executor``; return job id -> log.

    Ready jobs start in the order they are listed (the plan lists shared stages first), except
    that a job ``busy`` says another run is computing now waits until no other ready job is
    left: two runs on one store then share the work instead of taking turns, each waiting on
    the stage the other holds. A job whose input failed is not run: it is failed with that
    reason, and so are the jobs that need it. ``skip(job)`` may return a log to use instead of
    running the job (a failure that an earlier run recorded).
    """
    order = list(jobs)
    by_id = {j.id: j for j in order}
    index = {j.id: i for i, j in enumerate(order)}
    missing = {j.id: len(set(j.deps)) for j in order}
    dependents: dict[str, list[Job]] = defaultdict(list)
    for j in order:
        for d in set(j.deps):
            dependents[d].append(j)
    ready = [(index[j.id], j.id) for j in order if missing[j.id] == 0]
    heapq.heapify(ready)
    logs: dict[str, StageLog] = {}
    running: dict[cf.Future[StageLog], Job] = {}
    deaths: dict[str, int] = defaultdict(int)  # worker deaths per job

    def finish(job: Job, result: StageLog) -> None:
        logs[job.id] = result
        on_done(job, result)
        for child in dependents[job.id]:
            missing[child.id] -= 1
            if child.id in logs:
                continue
            if result.status == "failed":
                # the root cause travels down: "input pretrain 'base' failed: <why>"
                why = result.reason or ""
                if not why.startswith("input "):
                    why = f"input {job.kind} {job.label!r} failed: {why}"
                finish(child, StageLog(child.kind, child.label, child.key, cached=False,
                                       wall_s=0.0, status="failed", reason=why,
                                       error=f"not run: {why}"))
            elif missing[child.id] == 0:
                heapq.heappush(ready, (index[child.id], child.id))

    def alone(job: Job) -> bool:  # a job that killed its worker once runs alone
        return deaths[job.id] > 0

    def take() -> tuple[int, str] | None:
        """The first ready job that no other run is computing; else, with nothing of ours
        running, the first ready job (its worker waits on the claim); else None."""
        ready[:] = [e for e in ready if e[1] not in logs]  # failed through another input
        if not ready:
            return None
        ready.sort()  # a sorted list is a heap
        entry = next((e for e in ready if not busy(by_id[e[1]])), None)
        if entry is None:
            if running:  # every ready job is another run's now: wait for one of ours
                return None
            entry = ready[0]
        ready.remove(entry)
        return entry

    while ready or running:
        while len(running) < executor.slots and (entry := take()) is not None:
            job = by_id[entry[1]]
            if (skipped := skip(job)) is not None:
                finish(job, skipped)
                continue
            if running and (alone(job) or any(alone(j) for j in running.values())):
                heapq.heappush(ready, entry)
                break
            on_start(job)
            running[executor.submit(job)] = job
        if not running:
            break
        done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
        for future in done:
            job = running.pop(future)
            try:
                result = future.result()
            except Exception as err:  # the worker itself died; StageWorker.run never raises
                # A pool that loses one process fails every job it was running, so each gets a
                # second try, alone on a fresh worker: one that kills its worker again has
                # failed, and the others are not taken down with it.
                if deaths[job.id] < 1:
                    deaths[job.id] += 1
                    log.warning("%s %s: its worker died (%s); running it again", job.kind,
                                job.label, err)
                    heapq.heappush(ready, (index[job.id], job.id))
                    continue
                result = StageLog(job.kind, job.label, job.key, cached=False, wall_s=0.0,
                                  status="failed", error=WORKER_DIED.format(err=err),
                                  reason="worker process died (killed, or out of memory)")
            finish(job, result)
    never = [j.label for j in order if j.id not in logs]
    if never:  # an input that is not in the plan, or a cycle: a bug in the plan
        raise RuntimeError(f"schedule: {len(never)} jobs wait on inputs that never ran: "
                           f"{never[:3]}")
    return logs
