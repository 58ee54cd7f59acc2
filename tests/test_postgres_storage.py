"""Two walk-forward workers share one study on a real PostgreSQL server started for this test.

Needs the Debian postgresql server binaries (/usr/lib/postgresql/<v>/bin) and the psycopg2 driver
(`pip install -e ".[dev]"`); skipped with the reason otherwise. The server runs as the `postgres`
user when the tests run as root (postgres refuses root), from a throw-away data directory, on
127.0.0.1 and a free port, with fsync off; it is stopped and removed afterwards.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import optuna
import pytest

from test_walkforward import check_shared_study, start_worker
from test_walkforward_universe import UniverseWorker


def _server_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    bindir = _server_bin()
    if bindir is None or not (bindir / "initdb").exists():
        pytest.skip("PostgreSQL server binaries not found (/usr/lib/postgresql/<v>/bin); apt-get install postgresql")
    import psycopg2  # the [dev] extra's driver: a plain import (only the server may be missing)
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        if shutil.which("runuser") is None:
            pytest.skip("running as root and `runuser` is missing to start the server as 'postgres'")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="wf_pg_"))
    if as_user:
        os.chown(root, pw.pw_uid, pw.pw_gid)
    data, port = root / "data", _free_port()

    def run(*cmd):
        return subprocess.run([*as_user, *map(str, cmd)], check=True, capture_output=True, text=True, timeout=120)

    try:
        run(bindir / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        run(bindir / "pg_ctl", "-D", data, "-l", root / "server.log", "-w", "-t", "60", "-o",
            f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=50", "start")
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {exc.stderr or exc.stdout}")
    try:
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE wf")
        conn.close()
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/wf"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_study_on_postgresql(postgres_url, tmp_path):
    procs = [start_worker(postgres_url, "pg", tmp_path / "out", trials=4) for _ in range(2)]
    trials = check_shared_study(postgres_url, "pg", 4, procs)
    failed = [t.number for t in trials if t.state == optuna.trial.TrialState.FAIL and not t.user_attrs.get("surplus")]
    assert not failed, f"trials {failed} failed"


def test_two_universe_workers_share_one_study_on_postgresql(postgres_url, tmp_path, monkeypatch):
    monkeypatch.setenv("TBM_CACHE", str(tmp_path / "cache"))  # the universe's feature store, built by both at once
    procs = [UniverseWorker(postgres_url, "pgu", tmp_path / "out", trials=4) for _ in range(2)]
    trials = check_shared_study(postgres_url, "pgu", 4, procs)  # trials split, none twice, one "finalised here"
    assert sum(p.text.count("fold 0: refitting trial") for p in procs) == 1  # one refit of the fold
    failed = [t.number for t in trials if t.state == optuna.trial.TrialState.FAIL and not t.user_attrs.get("surplus")]
    assert not failed, f"trials {failed} failed"
    fold = optuna.load_study(study_name="pgu_fold0", storage=postgres_url).user_attrs["fold_result"]
    assert set(fold["symbols"]) == {"sp500", "goog"} and fold["trials"]["complete"] == 4
