import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from datafeeds.memory import CODE_RESERVE
from agents.resources.hardware import (
    CudaDevice,
    HardwareError,
    Resources,
    check_fits,
    choose_profile,
    configure_main_threads,
    describe,
    detect,
    estimate_train_memory,
    require_cuda,
    worker_init_fn,
)

GB = 10**9
GiB = 2**30
TB_KB = 1_000_000_000  # 1 TB expressed in /proc/meminfo's kB


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _proc(tmp_path: Path, cgroup_lines: str, mem_total_kb=TB_KB, mem_available_kb=TB_KB - 1000) -> Path:
    proc = tmp_path / "proc"
    _write(proc, "meminfo",
           f"MemTotal:       {mem_total_kb} kB\nMemFree:  5 kB\nMemAvailable:   {mem_available_kb} kB\n")
    _write(proc, "self/cgroup", cgroup_lines)
    return proc


@pytest.fixture(autouse=True)
def _eight_cpus_no_cuda(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_v2_memory_limit_wins_over_a_1tb_host(tmp_path):
    cg = tmp_path / "cg"
    _write(cg, "cgroup.controllers", "cpu memory")
    _write(cg, "job/memory.max", "512000000\n")
    _write(cg, "job/memory.current", "100000000\n")
    _write(cg, "job/memory.stat", "anon 60000000\ninactive_file 20000000\nactive_file 5\n")
    _write(cg, "job/cpu.max", "150000 100000\n")
    r = detect(cg, _proc(tmp_path, "0::/job\n"))
    assert r.cgroup_version == 2
    assert r.mem_total == TB_KB * 1024
    assert r.mem_limit == 512_000_000  # the journal's 488 MiB container
    # in use = anonymous memory (the page cache is reclaimable); the running code's pages are kept
    assert r.mem_available == 512_000_000 - 60_000_000 - CODE_RESERVE
    assert r.container_memory == 512_000_000
    assert r.cpu_quota == pytest.approx(1.5)
    assert r.effective_cpus == 2  # ceil(1.5), below the affinity of 8
    assert r.cpu_count == 64 and r.affinity == 8


def test_v2_unlimited_and_ancestor_limits(tmp_path):
    cg = tmp_path / "cg"
    _write(cg, "cgroup.controllers", "cpu memory")
    _write(cg, "a/b/memory.max", "max\n")
    _write(cg, "a/b/memory.current", "1000\n")
    _write(cg, "a/b/cpu.max", "max 100000\n")
    r = detect(cg, _proc(tmp_path, "0::/a/b\n", mem_available_kb=7_000_000))
    assert r.mem_limit is None and r.cpu_quota is None
    assert r.mem_available == 7_000_000 * 1024  # host MemAvailable
    assert r.effective_cpus == 8
    # A limit on the parent applies to the child too.
    _write(cg, "a/memory.max", "2000000\n")
    _write(cg, "a/cpu.max", "300000 100000\n")
    r = detect(cg, _proc(tmp_path, "0::/a/b\n"))
    assert r.mem_limit == 2_000_000 and r.mem_available == 0  # less than the code reserve is left
    assert r.effective_cpus == 3


def test_v2_falls_back_to_root_when_own_cgroup_is_not_visible(tmp_path):
    cg = tmp_path / "cg"
    _write(cg, "cgroup.controllers", "memory")
    _write(cg, "memory.max", "1073741824\n")
    _write(cg, "memory.current", "73741824\n")
    r = detect(cg, _proc(tmp_path, "0::/outside/namespace\n"))
    assert r.mem_limit == GiB and r.mem_available == 1_000_000_000 - CODE_RESERVE


def test_v1_tree(tmp_path):
    cg = tmp_path / "cg"
    _write(cg, "memory/docker/abc/memory.limit_in_bytes", "536870912\n")
    _write(cg, "memory/docker/abc/memory.usage_in_bytes", "136870912\n")
    _write(cg, "memory/docker/abc/memory.stat", "cache 10\ntotal_inactive_file 36870912\n")
    _write(cg, "memory/memory.limit_in_bytes", "9223372036854771712\n")  # root: "unlimited"
    _write(cg, "cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "250000\n")
    _write(cg, "cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    lines = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n"
    r = detect(cg, _proc(tmp_path, lines))
    assert r.cgroup_version == 1
    assert r.mem_limit == 512 * 2**20
    assert r.mem_available == 512 * 2**20 - 100_000_000 - CODE_RESERVE
    assert r.cpu_quota == pytest.approx(2.5) and r.effective_cpus == 3


def test_v1_unlimited(tmp_path):
    cg = tmp_path / "cg"
    _write(cg, "memory/memory.limit_in_bytes", "9223372036854771712\n")
    _write(cg, "memory/memory.usage_in_bytes", "5\n")
    _write(cg, "cpu/cpu.cfs_quota_us", "-1\n")
    _write(cg, "cpu/cpu.cfs_period_us", "100000\n")
    r = detect(cg, _proc(tmp_path, "4:memory:/\n3:cpu:/\n", mem_available_kb=3_000_000))
    assert r.mem_limit is None and r.cpu_quota is None
    assert r.mem_available == 3_000_000 * 1024 and r.effective_cpus == 8


def test_no_cgroup_at_all(tmp_path):
    r = detect(tmp_path / "nothing", _proc(tmp_path, ""))
    assert r.cgroup_version is None and r.mem_limit is None and r.cpu_quota is None


def test_detect_on_this_machine_is_sane():
    r = detect()
    assert 1 <= r.effective_cpus <= r.cpu_count
    assert 0 < r.mem_available <= r.mem_total


def _res(gpu_bytes=None, ram=64 * GB, limit=None, available=None) -> Resources:
    devices = () if gpu_bytes is None else (CudaDevice("Fake GPU", gpu_bytes),)
    return Resources(
        cpu_count=16, affinity=16, cpu_quota=None, mem_total=ram, mem_limit=limit,
        mem_available=available if available is not None else ram // 2, cuda_devices=devices, cgroup_version=2,
    )


def test_cuda_absent_gives_safe_profile_and_require_cuda_raises():
    r = detect()  # torch.cuda.is_available patched to False
    assert r.cuda_devices == ()
    p = choose_profile(r)
    assert (p.name, p.batch_size, p.feed, p.amp, p.tf32, p.device) == ("safe", 64, "host", False, False, "cpu")
    assert "no CUDA GPU" in p.reason
    with pytest.raises(HardwareError, match="CUDA") as info:
        require_cuda()
    assert "\n" not in str(info.value)
    with pytest.raises(HardwareError, match="CUDA"):
        choose_profile(r, gpu=True)


def test_fake_cuda_detected(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda i: SimpleNamespace(name="Fake A10", total_memory=24 * GB)
    )
    assert detect().cuda_devices == (CudaDevice("Fake A10", 24 * GB),)
    require_cuda()  # does not raise


def test_big_gpu_and_ram_gives_beast():
    p = choose_profile(_res(gpu_bytes=24 * GB, ram=64 * GB))
    # beast feeds the card from device-resident windows, never per-sample DataLoader workers
    assert (p.name, p.batch_size, p.feed, p.amp, p.tf32, p.device) == ("beast", 1024, "resident", True, True, "cuda")
    # A "16 GB" card reports a little less than 16e9 bytes and still qualifies.
    assert choose_profile(_res(gpu_bytes=15_843_721_216)).name == "beast"


@pytest.mark.parametrize(
    "res, missing",
    [
        (_res(gpu_bytes=8 * GB), "largest GPU"),
        (_res(gpu_bytes=24 * GB, ram=1000 * GB, limit=512_000_000), "container RAM"),
        (_res(), "no CUDA GPU"),
    ],
)
def test_auto_falls_back_to_safe_and_says_why(res, missing):
    p = choose_profile(res)
    assert p.name == "safe" and missing in p.reason


def test_explicit_requests_override():
    small = _res(gpu_bytes=8 * GB, ram=16 * GB)
    beast = choose_profile(small, "beast")
    assert beast.name == "beast" and beast.batch_size == 1024 and beast.device == "cuda"
    assert "largest GPU" in beast.reason and "container RAM" in beast.reason
    cpu_beast = choose_profile(_res(), "beast")
    assert cpu_beast.device == "cpu" and not cpu_beast.amp and not cpu_beast.tf32 and cpu_beast.feed == "host"
    assert "no CUDA GPU" in cpu_beast.reason
    safe = choose_profile(_res(gpu_bytes=24 * GB), "safe", gpu=True)
    assert safe.name == "safe" and safe.device == "cuda" and not safe.amp
    assert choose_profile(_res(gpu_bytes=24 * GB), "safe").device == "cpu"
    with pytest.raises(ValueError, match="profile"):
        choose_profile(small, "turbo")


def test_estimate_grows_and_check_fits_refuses_a_huge_config():
    base = dict(n_rows=100_000, n_features=16, seq_len=64, batch_size=64, model_params=72_321, num_workers=0)
    e = estimate_train_memory(**base)
    assert estimate_train_memory(**{**base, "batch_size": 128}) > e
    assert estimate_train_memory(**{**base, "seq_len": 128}) > e
    assert estimate_train_memory(**{**base, "num_workers": 4}) > e
    assert estimate_train_memory(**{**base, "n_rows": 200_000}) - e == 100_000 * 16 * 4  # the feature matrix
    # the default run on sp500 (4,025 bars x 8 features), batch 64 and 256: measured +148 and +524 MiB
    # of working set in a memory cgroup (tests/test_container.py checks the whole run against a limit)
    for batch, measured in ((64, 148), (256, 524)):
        est = estimate_train_memory(4_025, 8, 64, batch, 71_809, 0) / 2**20
        assert measured * 0.95 < est < measured * 1.25, (batch, est)
    container = _res(ram=1000 * GB, limit=512_000_000, available=400_000_000)
    check_fits(e, container)  # ~0.15 GB fits
    huge = estimate_train_memory(10**9, 64, 512, 65_536, 10**8, 16)
    assert huge > 10**12
    with pytest.raises(HardwareError, match="out of memory: training needs ~.* MiB more but the container's "
                       "488 MiB limit leaves 381 MiB, of which 80% is 305 MiB: lower --batch-size") as info:
        check_fits(huge, container)
    assert "--seq-len" in str(info.value) and "workers" in str(info.value)
    with pytest.raises(HardwareError):
        check_fits(int(0.81 * 400_000_000), container)
    with pytest.raises(ValueError, match="batch_size"):
        estimate_train_memory(**{**base, "batch_size": 0})


def test_worker_init_fn_sets_one_thread(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        worker_init_fn(0)
        assert os.environ["OMP_NUM_THREADS"] == "1"
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_configure_main_threads_uses_effective_cpus():
    before = torch.get_num_threads()
    r = Resources(cpu_count=64, affinity=8, cpu_quota=1.5, mem_total=GB, mem_limit=None, mem_available=GB)
    try:
        assert configure_main_threads(r) == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_describe_mentions_the_limits():
    r = _res(gpu_bytes=24 * GB, ram=1000 * GB, limit=512_000_000, available=400_000_000)
    text = describe(r)
    assert "16 usable CPUs" in text and "memory limit 0.5 GiB" in text and "Fake GPU" in text
    assert "\n" not in text
    assert "no CUDA GPU" in describe(_res())
