"""The README's library example runs as written (at tiny sizes): one job object per stage."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# README sizes → seconds-long ones; nothing else in the example is changed
SMALLER = {
    "PhantomConfig(n=2000,": "PhantomConfig(n=24,",
    "n_per_prompt=256, seed=seed)": "n_per_prompt=2, seed=seed, steps=2, shard_size=2)",
    "RemediationConfig(steps=150)": "RemediationConfig.tiny()",
}


def _library_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Library\n", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    for old, new in SMALLER.items():
        assert old in code, f"the README example no longer holds {old!r}"
        code = code.replace(old, new)
    return code


def test_the_readme_library_example_audits_remediates_and_reports(tiny_models, tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "t2medi").symlink_to(tiny_models["t2medi"])
    (tmp_path / "models" / "clf").symlink_to(tiny_models["classifier"])
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        scope: dict = {}
        exec(compile(_library_example(), "README.md#library", "exec"), scope)
    finally:
        os.chdir(cwd)
    for side in ("before", "after"):
        audit = json.loads((tmp_path / side / "audit.json").read_text())
        assert audit["n_images"] == 2
    assert (tmp_path / "models" / "t2medi-fair" / "model_index.json").is_file()
    assert (tmp_path / "report.html").stat().st_size > 1000
    assert scope["fair"].data["steps_done"] == scope["fair"].data["config"]["steps"]
