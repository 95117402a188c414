"""Ctrl-C: one line on stderr and exit code 130, from a real process sent SIGINT mid-command."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

# The audit itself is replaced by a wait, so the signal lands inside a running command (where
# typer turns KeyboardInterrupt into a silent exit 130) at a known moment.
CHILD = textwrap.dedent(
    """
    import signal, sys, time
    import medfair_audit

    # As in a terminal: a test runner started in the background hands its children SIGINT
    # ignored, and Python then keeps ignoring it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from medfair_cli.main import main

    def waiting(*args, **kwargs):
        print("running", flush=True)
        time.sleep(120)

    medfair_audit.run_audit = waiting
    sys.exit(main(sys.argv[1:]))
    """
)


def test_sigint_prints_one_line_and_exits_130(tiny_models, tmp_path):
    args = [
        "audit", tiny_models["t2medi"], "--classifier", tiny_models["classifier"],
        "--target", "male=0.58,female=0.42", "--prompt", "Axial FLAIR MRI of the brain.",
        "--out", tmp_path / "a",
    ]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "running"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == ["error: interrupted"], err
    assert "Traceback" not in out + err
