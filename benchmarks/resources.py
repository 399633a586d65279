"""What one job of a sweep may use: its GPU and its CPU threads, so that two jobs never fight.

- **Threads.** ``torch.set_num_threads(cores // jobs in parallel)``, where ``cores`` are the CPUs this
  process may run on (``os.sched_getaffinity``: taskset, cgroups and Slurm's cpusets respected) and
  the jobs in parallel come from the launcher: joblib's ``n_jobs``, Ray's ``ray.remote.num_cpus``
  (threads = the CPUs Ray reserved for the task), submitit's ``cpus_per_task``; 1 job for the plain
  serial launcher. ``FRAGILITY_THREADS`` overrides it.
- **GPU.** One GPU per job among those the job can see (``CUDA_VISIBLE_DEVICES`` is respected: Ray
  with ``num_gpus=1`` and Slurm with ``--gpus`` already hand each job exactly one). Where several
  jobs on one machine see the same GPUs (joblib, submitit_local), each claims a free one with an
  advisory file lock (``fcntl.flock``) held for the job; the kernel drops the lock if the process
  dies, so a crashed job never keeps a GPU. A job that finds every GPU taken waits for one.
  What the lock buys over ``job_num % n_gpus``: joblib reuses worker processes in any order, so
  numbering alone can put two running jobs on one GPU.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

LOCK_DIR = Path(tempfile.gettempdir()) / "fragility-gpu-locks"


@dataclass(frozen=True)
class JobResources:
    device: str  # "cpu" or "cuda:<index among the visible devices>"
    threads: int
    gpu: str | None = None  # the claimed GPU as the system names it (CUDA_VISIBLE_DEVICES entry)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def launcher_share(launcher: dict | None, cores: int) -> tuple[int, int | None]:
    """(jobs running at once on one machine, CPUs reserved per job or None) for a Hydra launcher config."""
    if not launcher:
        return 1, None
    target = str(launcher.get("_target_", ""))
    if "joblib" in target:
        n = int(launcher.get("n_jobs") or -1)
        return (max(1, cores + 1 + n) if n < 0 else n), None  # joblib: -1 = all cores, -2 = all but one
    if "ray" in target.lower():
        remote = (launcher.get("ray") or {}).get("remote") or {}
        cpus = remote.get("num_cpus")
        return (max(1, cores // int(cpus)) if cpus else cores), (int(cpus) if cpus else 1)
    if "submitit" in target:
        cpus = launcher.get("cpus_per_task")
        tasks = int(launcher.get("tasks_per_node") or 1)
        return tasks, (int(cpus) if cpus else None)
    return 1, None


def _current_launcher() -> dict | None:
    try:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf

        hc = HydraConfig.get()
        if str(hc.mode) != "RunMode.MULTIRUN":
            return None
        return OmegaConf.to_container(hc.launcher, resolve=True)
    except (ValueError, ImportError):  # no Hydra app around this call (Python API, tests)
        return None


def plan_threads(launcher: dict | None = None, cores: int | None = None) -> int:
    env = os.environ.get("FRAGILITY_THREADS")
    if env:
        return max(1, int(env))
    cores = cores or cpu_count()
    parallel, reserved = launcher_share(launcher, cores)
    return max(1, min(cores, reserved) if reserved else cores // parallel)


def _visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    n = torch.cuda.device_count()
    names = [s.strip() for s in env.split(",") if s.strip()] if env else []
    return names[:n] if len(names) >= n else [str(i) for i in range(n)]


@contextmanager
def _claim_gpu(names: list[str], poll_s: float = 1.0) -> Iterator[int]:
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    while True:
        for idx, name in enumerate(names):
            fd = os.open(LOCK_DIR / f"gpu-{name.replace('/', '_')}.lock", os.O_CREAT | os.O_RDWR, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield idx
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            return
        time.sleep(poll_s)


@contextmanager
def job_resources(device: str = "auto", launcher: dict | None = None) -> Iterator[JobResources]:
    """Set this process's torch threads and current GPU for one job; the GPU is held until exit.

    ``launcher``: the Hydra launcher config (default: the running sweep's, if any)."""
    launcher = launcher if launcher is not None else _current_launcher()
    threads = plan_threads(launcher)
    torch.set_num_threads(threads)
    name = str(device).lower()
    if name not in ("auto", "cuda") or not torch.cuda.is_available():
        yield JobResources(device="cpu" if name == "auto" else name, threads=threads)
        return
    names = _visible_gpus()
    with _claim_gpu(names) as idx:
        torch.cuda.set_device(idx)  # device "cuda"/"auto" now means this GPU for the whole job
        yield JobResources(device=f"cuda:{idx}", threads=threads, gpu=names[idx])
