"""labeling.jit: numba's cache where it can be written, compiled per process where it cannot."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from labeling import jit

ROOT = Path(__file__).resolve().parents[1]


def _kernel_nb(x):
    return x + 1


def test_falls_back_to_no_cache_with_one_warning_when_numba_finds_no_cache_folder(monkeypatch, caplog):
    def no_locator(cache=False, **options):
        if cache:
            raise RuntimeError("cannot cache function 'f': no locator available for file 'x.py'")
        return lambda f: ("compiled", f, options)

    monkeypatch.setattr(jit, "njit", no_locator)
    monkeypatch.setattr(jit, "_warned", False)
    monkeypatch.setattr(jit, "_KERNELS", [])
    with caplog.at_level(logging.WARNING, logger="labeling.jit"):
        first = jit.njit_cached(_kernel_nb)
        second = jit.njit_cached(fastmath=True)(_kernel_nb)
    assert first == ("compiled", _kernel_nb, {}) and second == ("compiled", _kernel_nb, {"fastmath": True})
    assert len(caplog.records) == 1 and "NUMBA_CACHE_DIR" in caplog.records[0].getMessage()


def test_other_numba_errors_are_not_swallowed(monkeypatch):
    def broken(cache=False, **options):
        raise RuntimeError("something else")

    monkeypatch.setattr(jit, "njit", broken)
    monkeypatch.setattr(jit, "_KERNELS", [])
    with pytest.raises(RuntimeError, match="something else"):
        jit.njit_cached(_kernel_nb)


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root and util-linux unshare")
def test_a_read_only_install_with_no_writable_home_backtests(tmp_path):
    """docker --user on a read-only image: the repository mounted read-only (a private mount namespace,
    nothing outside it changes), HOME inside it. numba's cache used to raise at import."""
    script = f"""
set -e
mount --bind {ROOT} {ROOT}
mount -o remount,ro,bind {ROOT}
cd {ROOT}
HOME={ROOT}/no-such-home {sys.executable} run_backtest.py --agent models/agent1.onnx --quiet --no-plot
"""
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    assert "buy & hold" in done.stdout
    warnings = [ln for ln in done.stderr.splitlines() if "numba cannot cache" in ln]
    assert len(warnings) == 1, done.stderr
    assert "Traceback" not in done.stderr


_MODULE = '''
from typing import NamedTuple

import numpy as np
from labeling.jit import njit_cached


class {name}(NamedTuple):
    a: np.ndarray
    b: float


@njit_cached
def add_nb(t):
    return t.a.sum() + t.b


print(add_nb({name}(np.ones(3), 1.5)))
'''


def test_a_stale_cache_naming_a_renamed_type_is_a_miss_not_a_crash(tmp_path):
    # a checkout updated in place: the kernel's cache index was written when its argument type had another name
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    mod = tmp_path / "stale_mod.py"
    runs = []
    for name in ("Old", "New"):
        mod.write_text(_MODULE.format(name=name))
        os.utime(mod, (1e9 + len(runs), 1e9 + len(runs)))  # a new source stamp, as an edit gives
        runs.append(subprocess.run([sys.executable, "-c", "import stale_mod"], env=env, capture_output=True,
                                   text=True, timeout=300))
    assert [r.returncode for r in runs] == [0, 0], runs[-1].stderr
    assert [r.stdout.strip() for r in runs] == ["4.5", "4.5"]
