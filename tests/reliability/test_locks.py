"""One writer per output folder: a second run refuses while the first lives; a killed run's lock
is stale and taken over.

The holder is a real other process (a live one, then the same one SIGKILLed), because a lock is
re-entrant within one process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from medfair_audit._io import building_dir, run_lock
from medfair_audit.config import T2IJob
from medfair_audit.exceptions import DataError
from medfair_audit.models.t2medi import train_t2i
from medfair_audit.remediation import RemediationJob, remediate
from medfair_audit.target import parse_target
from tests.cli.test_cli import assert_one_line_error, run

HOLD = textwrap.dedent(
    """
    import sys, time
    from medfair_audit._io import run_lock
    with run_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(600)
    """
)


@pytest.fixture
def holder(tmp_path):
    """A live process holding the lock of ``tmp_path / 'out'``; yields (out, process)."""
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    yield out, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_live_holder_refuses_a_second_run_and_a_killed_one_is_taken_over(holder):
    out, proc = holder
    lock = out.with_name("out.lock")
    with pytest.raises(DataError, match=rf"being written by another medfair run \(pid {proc.pid}"):
        with run_lock(out):
            pass
    assert json.loads(lock.read_text())["pid"] == proc.pid  # the refusal left it alone
    _kill(proc)  # SIGKILL: no clean-up ran, the lock file stays
    assert lock.exists()
    with run_lock(out) as taken:
        assert json.loads(taken.read_text())["pid"] == os.getpid()
        with run_lock(out):  # re-entrant within a process
            pass
        assert taken.exists()
    assert not lock.exists()


@pytest.mark.parametrize(
    "content",
    ["", "{not json", json.dumps({"pid": 1, "host": "elsewhere", "started": "yesterday"})],
)
def test_a_lock_file_nobody_holds_is_stale_whatever_it_says(tmp_path, content):
    """A lock file left by a killed run (any content, even someone else's pid) holds nothing."""
    (tmp_path / "out.lock").write_text(content)
    with run_lock(tmp_path / "out") as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_cli_audit_refuses_a_folder_another_run_writes(capsys, holder, tiny_models):
    out, proc = holder
    args = [
        "audit", tiny_models["t2medi"], "--classifier", tiny_models["classifier"],
        "--target", "male=0.5,female=0.5", "--prompt", "Axial MRI.", "--n-per-prompt", 2,
        "--batch-size", 2, "--steps", 1, "--n-boot", 10, "--out", out,
    ]  # fmt: skip
    code, _, err = run(capsys, *args)
    assert_one_line_error(code, err, "--out", "another medfair run", f"pid {proc.pid}")
    assert not out.exists()
    _kill(proc)
    code, _, err = run(capsys, *args)
    assert code == 0, err
    assert (out / "audit.json").is_file() and not out.with_name("out.lock").exists()


def test_training_remediation_and_built_folders_are_locked(holder, tiny_models, tmp_path):
    out, _ = holder
    with pytest.raises(DataError, match="another medfair run"):
        train_t2i(T2IJob(data=tmp_path / "no-data", out=out, clip=tiny_models["clip"]))
    with pytest.raises(DataError, match="another medfair run"):
        remediate(
            RemediationJob(
                checkpoint=tiny_models["t2medi"],
                classifier=tiny_models["classifier"],
                target=parse_target("male=0.5,female=0.5"),
                prompts=["Axial MRI."],
                out=out,
            )
        )
    with pytest.raises(DataError, match="another medfair run"), building_dir(out):
        pass
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_two_racing_runs_never_both_hold_the_lock(tmp_path):
    """Eight processes race for one lock many times: at most one holds it at any moment."""
    script = textwrap.dedent(
        """
        import os, sys, time
        from medfair_audit._io import run_lock
        from medfair_audit.exceptions import DataError
        out, log = sys.argv[1], sys.argv[2]
        for _ in range(30):
            try:
                with run_lock(out):
                    with open(log, "a") as f:
                        f.write(f"in {os.getpid()} {time.monotonic()}\\n")
                    time.sleep(0.002)
                    with open(log, "a") as f:
                        f.write(f"out {os.getpid()} {time.monotonic()}\\n")
            except DataError:
                pass
        """
    )
    log = tmp_path / "log.txt"
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "out"), str(log)])
        for _ in range(8)
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    inside = 0
    entries = log.read_text().splitlines()
    for line in entries:
        inside += 1 if line.startswith("in ") else -1
        assert inside in (0, 1), entries
    assert len(entries) >= 2


def test_a_symlink_to_a_folder_being_written_is_the_same_output(holder, tmp_path):
    out, proc = holder
    link = tmp_path / "link"
    link.symlink_to(out, target_is_directory=True)
    with pytest.raises(DataError, match=rf"being written by another medfair run \(pid {proc.pid}"):
        with run_lock(link):
            pass
    elsewhere = tmp_path / "sub"
    elsewhere.mkdir()
    (elsewhere / "out").symlink_to(out, target_is_directory=True)  # same name, other folder
    with pytest.raises(DataError, match="being written by another medfair run"):
        with run_lock(elsewhere / "out"):
            pass
