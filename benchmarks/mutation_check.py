"""Mutation check: plant each bug of ``tests/mutations/mutations.json`` and see whether the tests catch it.

Each entry is an edit (file, old text, new text) that breaks one invariant we care about: causality,
the barrier tie rule, the purge, train-only normalisation, fill timing, the portfolio tie rule, where
the threshold comes from, exact barrier touches. For each, the tracked files are copied to a scratch
folder, the edit is applied there (the old text must occur exactly once), and the entry's tests run
against the copy (``PYTHONPATH`` puts the copy first). Caught: the tests fail. Survived: they pass,
and the invariant is unguarded. All the listed tests first run once on an unmutated copy: they must
pass there, so a failure is the mutation's doing.

    python benchmarks/mutation_check.py [--only NAME_PART] [--keep]

Exit 0 when every mutation is caught, 1 when one survives, 2 on a bad mutation file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTATIONS = ROOT / "tests" / "mutations" / "mutations.json"


def _copy_tracked(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        src = ROOT / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)


def _pytest(copy: Path, tests: list[str]) -> tuple[bool, float, str]:
    env = {**os.environ, "PYTHONPATH": str(copy) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "NUMBA_CACHE_DIR": str(copy / ".numba_cache"), "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests], cwd=copy,
                          env=env, capture_output=True, text=True)
    tail = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode == 0, time.perf_counter() - t0, tail[-1] if tail else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=None, help="run the mutations whose name contains this text")
    ap.add_argument("--keep", action="store_true", help="keep the scratch copies (their paths are printed)")
    args = ap.parse_args(argv)
    entries = json.loads(MUTATIONS.read_text())
    if args.only:
        entries = [e for e in entries if args.only in e["name"]]
    for e in entries:
        text = (ROOT / e["file"]).read_text()
        if text.count(e["old"]) != 1:
            print(f"error: {MUTATIONS.name}: {e['name']!r}: the old text occurs {text.count(e['old'])} times in "
                  f"{e['file']} (must be once); update the mutation", file=sys.stderr)
            return 2

    results = []
    t_all = time.perf_counter()
    # once, unmutated: the copy's own code must be the one imported, and every listed test must pass
    with tempfile.TemporaryDirectory(prefix="mutation-base-") as base:
        copy = Path(base) / "repo"
        _copy_tracked(copy)
        probe = subprocess.run([sys.executable, "-c", "import agents; print(agents.__file__)"], cwd=copy,
                               env={**os.environ, "PYTHONPATH": str(copy)}, capture_output=True, text=True)
        if not probe.stdout.strip().startswith(str(copy)):
            print(f"error: the copy's packages are not the ones imported ({probe.stdout.strip()})", file=sys.stderr)
            return 2
        every = sorted({t for e in entries for t in e["tests"]})
        ok, secs, tail = _pytest(copy, every)
        if not ok:
            print(f"error: the mutations' tests fail without any mutation ({tail})", file=sys.stderr)
            return 2
        print(f"unmutated: {len(every)} test selections pass ({secs:.0f} s)", flush=True)
    for e in entries:
        scratch = Path(tempfile.mkdtemp(prefix="mutation-"))
        try:
            copy = scratch / "repo"
            _copy_tracked(copy)
            target = copy / e["file"]
            target.write_text(target.read_text().replace(e["old"], e["new"], 1))
            passed, secs, tail = _pytest(copy, e["tests"])
            verdict = "SURVIVED" if passed else "caught"
            results.append((e["name"], verdict, secs))
            print(f"{verdict:<9} {secs:6.1f} s  {e['name']}  [{' '.join(e['tests'])}]  {tail}", flush=True)
        finally:
            if args.keep:
                print(f"          kept {scratch}")
            else:
                shutil.rmtree(scratch, ignore_errors=True)
    caught = sum(v == "caught" for _, v, _ in results)
    print(f"\n{caught} of {len(results)} mutations caught in {time.perf_counter() - t_all:.0f} s")
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
