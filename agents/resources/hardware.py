"""What this process may really use (cgroup CPU/memory limits, CUDA) and a training profile to fit it.

A container reports the HOST's cores and RAM through os.cpu_count() and /proc/meminfo; its cgroup
holds the real limits (e.g. 488 MB of RAM on a 1 TB host), so both are read and the smaller wins.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from datafeeds.memory import cgroup_chain, meminfo, memory_state, own_cgroups, read_int, read_text

log = logging.getLogger(__name__)

# Beast thresholds under the nominal 16 GB / 32 GB: devices report less than the label (docs/DECISIONS.md)
_BEAST_GPU_BYTES = 15 * 10**9
_BEAST_RAM_BYTES = 30 * 10**9
_WORKER_OVERHEAD_BYTES = 200 * 2**20  # a DataLoader worker: interpreter + torch, private pages
# Floats kept per (sample, bar, layer) for backward: ~24 d_model-wide tensors (qkv, norms, residuals,
# dropout masks), 4 attention maps of n_heads * L, 4 MLP-wide ones.
_ACT_D_MODEL, _ACT_ATTENTION, _ACT_FEEDFORWARD = 24, 4, 4
# Autograd's temporaries and the allocator add about half again to the activations above (docs/DECISIONS.md)
_ACT_MEASURED_FACTOR = 1.5
_FIT_FRACTION = 0.8  # leave 20% of available memory for the allocator, page cache, the unexpected


class HardwareError(RuntimeError):
    """The machine lacks what a run needs (CUDA, memory); the message says what to change."""


@dataclass(frozen=True)
class CudaDevice:
    name: str
    total_memory: int  # bytes


@dataclass(frozen=True)
class Resources:
    """CPU, memory and GPUs available to this process, cgroup limits applied."""

    cpu_count: int  # logical CPUs of the host (os.cpu_count)
    affinity: int  # CPUs this process may be scheduled on
    cpu_quota: float | None  # cgroup CPU quota in CPUs (quota / period); None = unlimited
    mem_total: int  # host RAM, bytes (/proc/meminfo MemTotal)
    mem_limit: int | None  # cgroup memory limit, bytes; None = unlimited
    mem_available: int  # bytes this process can still allocate: min(limit - usage, MemAvailable)
    cuda_devices: tuple[CudaDevice, ...] = ()
    cgroup_version: int | None = None  # 1, 2 or None (no cgroup found)

    @property
    def effective_cpus(self) -> int:
        """min(affinity, ceil(quota)), at least 1."""
        cpus = self.affinity
        if self.cpu_quota is not None:
            cpus = min(cpus, math.ceil(self.cpu_quota))
        return max(1, cpus)

    @property
    def container_memory(self) -> int:
        """RAM the container may hold in total: the cgroup limit, else the host's RAM."""
        return self.mem_total if self.mem_limit is None else min(self.mem_limit, self.mem_total)

    @property
    def has_cuda(self) -> bool:
        return bool(self.cuda_devices)

    @property
    def max_gpu_memory(self) -> int:
        return max((d.total_memory for d in self.cuda_devices), default=0)


@dataclass(frozen=True)
class Profile:
    """Data-loading and precision settings for a training run."""

    name: str  # "beast" or "safe"
    batch_size: int  # the default; beast on CUDA measures its own (agents.data.feed.measure_batch_size)
    # how batches reach the model (agents.data.feed): "host" = batched gathers in the main process;
    # "resident" = windows copied to the device once, batches gathered there (falls back to
    # "prefetch", batched host gathers pinned on a background thread, where they do not fit)
    feed: str
    amp: bool  # mixed precision: bf16 autocast where the card supports it, else fp16 + GradScaler (CUDA only)
    tf32: bool  # TF32 matmuls (CUDA only)
    device: str  # "cpu" or "cuda"
    reason: str  # why this profile, and any warning about what the machine lacks

    FEEDS = ("host", "resident", "prefetch")

    def __post_init__(self):
        if self.feed not in self.FEEDS:
            raise ValueError(f"feed must be one of {', '.join(self.FEEDS)}, got {self.feed!r}")
        if (self.amp or self.tf32) and self.device != "cuda":
            raise ValueError("amp and tf32 need the cuda device")


# -- detection ---------------------------------------------------------------------------------


def _cpu_quota(cgroup_root: Path, own: dict[str, str], version: int | None) -> float | None:
    """The cgroup CPU quota in CPUs (the smallest up the chain), None if unlimited."""
    quota: float | None = None
    if version == 2:
        for d in cgroup_chain(cgroup_root, own.get("")):
            cpu_max = (read_text(d / "cpu.max") or "").split()
            if len(cpu_max) == 2 and cpu_max[0] != "max":
                try:
                    q = int(cpu_max[0]) / int(cpu_max[1])
                    quota = q if quota is None else min(quota, q)
                except (ValueError, ZeroDivisionError):
                    pass
    elif version == 1:
        mount = next((cgroup_root / m for m in ("cpu", "cpu,cpuacct", "cpuacct,cpu") if (cgroup_root / m).is_dir()),
                     None)
        if mount is not None:
            for d in cgroup_chain(mount, own.get("cpu")):
                q, p = read_int(d / "cpu.cfs_quota_us"), read_int(d / "cpu.cfs_period_us")
                if q is not None and p and q > 0:  # -1 = unlimited
                    quota = q / p if quota is None else min(quota, q / p)
    return quota


def _cuda_devices() -> tuple[CudaDevice, ...]:
    import torch  # here: the memory and CPU readings above need no torch

    if not torch.cuda.is_available():
        return ()
    devices = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        devices.append(CudaDevice(name=props.name, total_memory=int(props.total_memory)))
    return tuple(devices)


def detect(cgroup_root: str | os.PathLike = "/sys/fs/cgroup", proc_root: str | os.PathLike = "/proc") -> Resources:
    """Resources of this process; the roots are parameters so tests can point at fake trees."""
    cgroup_root, proc_root = Path(cgroup_root), Path(proc_root)
    cpu_count = os.cpu_count() or 1
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        affinity = cpu_count
    mem = memory_state(cgroup_root, proc_root)
    if mem.version is None and (cgroup_root / "cpu").is_dir():
        version: int | None = 1  # a v1 tree with a cpu controller but no memory one
    else:
        version = mem.version
    resources = Resources(
        cpu_count=cpu_count,
        affinity=affinity,
        cpu_quota=_cpu_quota(cgroup_root, own_cgroups(proc_root), version),
        mem_total=meminfo(proc_root).get("MemTotal", 0),
        mem_limit=mem.limit,
        mem_available=mem.available,
        cuda_devices=_cuda_devices(),
        cgroup_version=version,
    )
    log.debug("detected resources: %s", resources)
    return resources


# -- decisions -----------------------------------------------------------------------------------


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _beast_shortfalls(resources: Resources) -> list[str]:
    missing = []
    if not resources.has_cuda:
        missing.append("no CUDA GPU")
    elif resources.max_gpu_memory < _BEAST_GPU_BYTES:
        missing.append(f"largest GPU has {_gib(resources.max_gpu_memory)} (< 16 GB)")
    if resources.container_memory < _BEAST_RAM_BYTES:
        missing.append(f"container RAM is {_gib(resources.container_memory)} (< 32 GB)")
    return missing


def choose_profile(resources: Resources, requested: str = "auto", *, gpu: bool = False) -> Profile:
    """Pick "beast" (big GPU and RAM) or "safe"; an explicit request wins, with a warning in ``reason``.

    ``gpu=True`` asks for CUDA in the safe profile too and raises HardwareError if there is none.
    """
    if requested not in ("auto", "beast", "safe"):
        raise ValueError(f"profile must be 'auto', 'beast' or 'safe', got {requested!r}")
    if gpu and not resources.has_cuda:
        raise HardwareError(
            "a GPU was requested but no CUDA device is available: "
            "drop the GPU option or install a CUDA build of torch"
        )
    missing = _beast_shortfalls(resources)
    name = requested if requested != "auto" else ("safe" if missing else "beast")
    if name == "beast":
        cuda = resources.has_cuda
        if requested == "auto":
            reason = f"auto: GPU with {_gib(resources.max_gpu_memory)} and {_gib(resources.container_memory)} RAM"
        elif missing:
            reason = "beast requested although it does not fit: " + "; ".join(missing)
            log.warning("profile %s", reason)
        else:
            reason = "beast requested"
        return Profile("beast", 1024, feed="resident" if cuda else "host", amp=cuda, tf32=cuda,
                       device="cuda" if cuda else "cpu", reason=reason)
    device = "cuda" if gpu else "cpu"
    if requested == "safe":
        reason = "safe requested"
    else:
        reason = "auto: beast needs a >= 16 GB GPU and >= 32 GB RAM; " + "; ".join(missing)
    return Profile("safe", 64, feed="host", amp=False, tf32=False, device=device, reason=reason)


def require_cuda() -> None:
    """Raise HardwareError unless torch can use a CUDA device."""
    import torch

    if not torch.cuda.is_available():
        raise HardwareError(
            f"CUDA is not available to torch {torch.__version__} (CPU-only build or no GPU visible): "
            "run without the GPU option or install a CUDA build of torch"
        )


def estimate_train_memory(
    n_rows: int,
    n_features: int,
    seq_len: int,
    batch_size: int,
    model_params: int,
    num_workers: int,
    *,
    d_model: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    dim_feedforward: int = 128,
) -> int:
    """Rough peak bytes of a training run: data, batches in flight, activations, weights + Adam."""
    for name, value in (("n_rows", n_rows), ("n_features", n_features), ("seq_len", seq_len),
                        ("batch_size", batch_size), ("model_params", model_params)):
        if value < 1:
            raise ValueError(f"estimate_train_memory: {name} must be >= 1, got {value}")
    if num_workers < 0:
        raise ValueError(f"estimate_train_memory: num_workers must be >= 0, got {num_workers}")
    f32 = 4
    features = n_rows * n_features * f32
    # A DataLoader keeps prefetch_factor=2 batches per worker in flight; no workers = one batch.
    batches = max(1, 2 * num_workers) * batch_size * seq_len * n_features * f32
    per_position = _ACT_D_MODEL * d_model + _ACT_ATTENTION * n_heads * seq_len + _ACT_FEEDFORWARD * dim_feedforward
    activations = _ACT_MEASURED_FACTOR * n_layers * batch_size * seq_len * per_position * f32
    weights = model_params * f32 * 4  # weights, gradients, Adam's two moments
    workers = num_workers * _WORKER_OVERHEAD_BYTES
    return int(features + batches + activations + weights + workers)


def check_fits(estimate: int, resources: Resources, *, what: str = "training", reserved: int = 0) -> None:
    """Raise HardwareError if ``estimate`` bytes (``what`` needs them) exceed 80% of the memory still
    available, less ``reserved`` bytes that this process may hold by then but does not hold yet."""
    left = max(0, resources.mem_available - reserved)
    budget = _FIT_FRACTION * left
    if estimate > budget:
        kept = f" ({_mib(reserved)} of it kept for numba's compiler)" if reserved else ""
        if resources.mem_limit is not None:
            where = (f"the container's {_mib(resources.mem_limit)} limit leaves {_mib(left)}{kept}, "
                     f"of which 80% is {_mib(int(budget))}")
        else:
            where = f"the host has {_mib(left)} available{kept}, of which 80% is {_mib(int(budget))}"
        raise HardwareError(
            f"out of memory: {what} needs ~{_mib(estimate)} more but {where}: lower --batch-size or "
            "--seq-len (or the number of workers), or give the container more memory"
        )


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def worker_init_fn(worker_id: int) -> None:
    """DataLoader worker setup: one thread each.

    N workers each starting an OpenMP pool sized to the host's cores oversubscribe a small container
    and can deadlock after fork; one thread per worker avoids both.
    """
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def configure_main_threads(resources: Resources) -> int:
    """Use as many intra-op threads as the process may really run (cgroup quota, affinity)."""
    import torch

    n = resources.effective_cpus
    torch.set_num_threads(n)
    return n


def describe(resources: Resources) -> str:
    """One paragraph for logs and run reports."""
    r = resources
    quota = "no CPU quota" if r.cpu_quota is None else f"CPU quota {r.cpu_quota:g}"
    limit = "no memory limit" if r.mem_limit is None else f"memory limit {_gib(r.mem_limit)}"
    cgroup = f"cgroup v{r.cgroup_version}" if r.cgroup_version else "no cgroup found"
    if r.cuda_devices:
        gpus = ", ".join(f"{d.name} ({_gib(d.total_memory)})" for d in r.cuda_devices)
    else:
        gpus = "no CUDA GPU"
    return (
        f"{r.effective_cpus} usable CPUs (host {r.cpu_count}, affinity {r.affinity}, {quota}); "
        f"{_gib(r.mem_available)} RAM available (host {_gib(r.mem_total)}, {limit}, {cgroup}); {gpus}."
    )
