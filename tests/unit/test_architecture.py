"""The structure holds: one source of defaults, save/load pairs, readable help, layering."""

from __future__ import annotations

import ast
import dataclasses
import os
import re
from pathlib import Path

import pytest
import torch
import typer
from medfair_cli.main import app
from typer.testing import CliRunner

from medfair_audit.config import (
    ClassifierConfig,
    CLIPTrainConfig,
    GenerationConfig,
    RemediationConfig,
    T2IConfig,
)

ROOT = Path(__file__).resolve().parents[2]


def _commands() -> dict[str, object]:
    """Every leaf command of the CLI by its full name (``train clip``)."""
    root = typer.main.get_command(app)
    out = {}

    def walk(group: object, prefix: str) -> None:
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                walk(cmd, f"{prefix}{name} ")
            else:
                out[f"{prefix}{name}"] = cmd

    walk(root, "")
    return out


def _as_field(value: object, field_default: object) -> object:
    """A CLI default in the form of the dataclass field (comma lists → tuples of ints)."""
    if isinstance(field_default, tuple) and isinstance(value, str):
        return tuple(int(v) for v in value.split(","))
    return value


# command → (config class, CLI parameter → field where the names differ)
CONFIGS = {
    "train clip": [(CLIPTrainConfig, {})],
    "train t2i": [(T2IConfig, {})],
    "train classifier": [(ClassifierConfig, {})],
    "remediate": [(RemediationConfig, {})],
    "audit": [(GenerationConfig, {"batch_size": "shard_size"})],
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_cli_default_is_its_dataclass_field(name: str) -> None:
    from medfair_audit.audit import AuditConfig

    command = _commands()[name]
    configs = CONFIGS[name] + ([(AuditConfig, {})] if name == "audit" else [])
    checked = 0
    for cls, renamed in configs:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for param in command.params:
            field = fields.get(renamed.get(param.name, param.name))
            if field is None or field.default is dataclasses.MISSING:
                continue
            if param.default is None and field.default is not None:  # depends on a mode
                shown = field.default
                if isinstance(shown, tuple):
                    shown = ",".join(map(str, shown))
                assert f"(default {shown}" in " ".join((param.help or "").split()), (
                    f"{name} --{param.name.replace('_', '-')}: no default, and its help does not "
                    f"name {cls.__name__}.{field.name} = {field.default!r}"
                )
                checked += 1
                continue
            assert _as_field(param.default, field.default) == field.default, (
                f"{name} --{param.name.replace('_', '-')}: CLI default {param.default!r}, "
                f"{cls.__name__}.{field.name} = {field.default!r}"
            )
            checked += 1
    assert checked >= 5  # the mapping above really reaches the options


def test_presets_are_valid_and_smaller_than_the_defaults() -> None:
    assert CLIPTrainConfig.tiny().width < CLIPTrainConfig().width
    assert T2IConfig.tiny().unet_steps < T2IConfig().unet_steps
    assert ClassifierConfig.tiny().widths < ClassifierConfig().widths
    assert RemediationConfig.tiny().steps < RemediationConfig.demo().steps
    assert RemediationConfig.tiny(seed=3).seed == 3  # overrides win
    assert RemediationConfig.demo().align_to == "corrected"


def test_config_module_loads_no_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, medfair_audit.config as c; c.RemediationConfig(); c.Speed(); "
        "c.AuditConfig, c.RemediationJob, c.Placement; "
        "c.T2IJob(data='d', out='o', clip='c'); c.ClassifierJob(data='d', out='o'); "
        "c.CLIPJob(data='d', out='o'); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("width", [80, 120])
def test_help_reads_well_at_80_and_120_columns(width: int) -> None:
    """Prose paragraphs are one line each (Rich wraps them); examples fit the width."""
    for name, command in _commands().items():
        paragraphs = (command.help or "").split("\n\n")
        for p in paragraphs:
            if p.startswith(" "):  # an example: kept as written
                for line in p.splitlines():
                    assert len(line) + 2 <= width, f"{name}: example line too long: {line!r}"
            else:
                assert "\n" not in p, f"{name}: help paragraph broken by hand: {p[:60]!r}"
        result = CliRunner().invoke(
            app, [*name.split(), "--help"], env={"COLUMNS": str(width), "TERM": "dumb"}
        )
        assert result.exit_code == 0, result.output
        assert max(len(line) for line in result.output.splitlines()) <= width


def _imports(path: Path) -> list[str]:
    """Modules a source file imports (relative imports resolved against the package)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                out.append(".".join([*base, node.module] if node.module else base))
            else:
                out.append(node.module or "")
        elif isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
    return out


# Lower layers never import higher ones (checked on every import statement, lazy ones too).
# From the bottom: data < training (the kit) < models < metrics-using results (audit.result,
# quality, joint, config, paired, load, estimate) < reporting (renders result dicts, reads saved
# audits) < audit.run (writes audit.html) < remediation < demo < the CLI.
RESULTS = (
    "medfair_audit/audit/result.py",
    "medfair_audit/audit/quality.py",
    "medfair_audit/audit/joint.py",
    "medfair_audit/audit/config.py",
    "medfair_audit/audit/paired.py",
    "medfair_audit/audit/load.py",
    "medfair_audit/audit/estimate.py",
    "medfair_audit/audit/views.py",
    "medfair_audit/audit/document.py",
)
TOP = ("medfair_audit.audit.run", "medfair_audit.remediation", "medfair_audit.demo")
LAYERS = [
    (("medfair_audit/data",), ("medfair_audit.models", "medfair_audit.metrics",
                               "medfair_audit.audit", "medfair_audit.reporting", *TOP)),
    (("medfair_audit/training.py",), ("medfair_audit.models", "medfair_audit.metrics",
                                      "medfair_audit.audit", "medfair_audit.reporting", *TOP)),
    (("medfair_audit/models",), ("medfair_audit.audit", "medfair_audit.reporting", *TOP)),
    (("medfair_audit/metrics",), ("medfair_audit.models", "medfair_audit.audit",
                                  "medfair_audit.reporting", *TOP)),
    (RESULTS, ("medfair_audit.reporting", *TOP)),
    (("medfair_audit/reporting",), TOP),
    (("medfair_audit/audit/run.py",), TOP[1:]),
    (("medfair_audit/remediation",), ("medfair_audit.reporting", "medfair_audit.demo")),
    (("medfair_audit",), ("medfair_cli", "typer", "rich")),
]  # fmt: skip


@pytest.mark.parametrize(("where", "above"), LAYERS, ids=[w[0] for w, _ in LAYERS])
def test_layers_import_only_downward(where: tuple[str, ...], above: tuple[str, ...]) -> None:
    files = []
    for w in where:
        path = ROOT / w
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    assert files
    bad = [
        f"{f.relative_to(ROOT)} imports {m}"
        for f in files
        for m in _imports(f)
        if any(m == a or m.startswith(a + ".") for a in above)
    ]
    assert not bad


@pytest.mark.parametrize("package", ["audit", "reporting"])
def test_audit_and_reporting_are_small_pieces(package: str) -> None:
    """No module over 400 lines, no function over 80: the audit is a sequence of stages and the
    report a table model with one renderer per format, each readable on its own."""
    big, long = [], []
    for f in sorted((ROOT / "medfair_audit" / package).glob("*.py")):
        text = f.read_text()
        if len(text.splitlines()) > 400:
            big.append(f"{f.name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long.append(f"{f.name}::{node.name}: {n} lines")
    assert not big and not long, big + long


def test_cli_imports_nothing_private_from_the_library() -> None:
    bad = [
        f"{f.name}: {m}"
        for f in sorted((ROOT / "cli").glob("*.py"))
        for m in _imports(f)
        if m.startswith("medfair_audit") and any(p.startswith("_") for p in m.split(".")[1:])
    ]
    assert not bad


# -- save_pretrained / from_pretrained pairs ----------------------------------------------------


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_clip_round_trip(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from medfair_audit.models.clip import CLIP

    clip = CLIP.from_pretrained(tiny_models["clip"])
    again = CLIP.from_pretrained(clip.save_pretrained(tmp_path / "clip"))
    _same_weights(clip.model, again.model)
    text = ["axial flair mri of the brain"]
    assert clip.tokenizer(text).input_ids == again.tokenizer(text).input_ids


def test_classifier_round_trip(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from medfair_audit.models.classifier import SubgroupClassifier

    clf = SubgroupClassifier.from_pretrained(tiny_models["classifier"])
    again = SubgroupClassifier.from_pretrained(clf.save_pretrained(tmp_path / "clf"))
    _same_weights(clf.model, again.model)
    assert (again.attribute, again.groups, again.temperature, again.evaluation) == (
        clf.attribute,
        clf.groups,
        clf.temperature,
        clf.evaluation,
    )
    x = torch.rand(3, 1, 64, 64) * 2 - 1
    assert torch.equal(clf.predict_proba(x), again.predict_proba(x))


def test_image_encoder_round_trip(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from medfair_audit.remediation import ImageEncoder

    enc = ImageEncoder.from_pretrained(tiny_models["clip"])
    enc.mean, enc.std = torch.tensor([0.5]).view(1, 1, 1, 1), torch.tensor([0.25]).view(1, 1, 1, 1)
    again = ImageEncoder.from_pretrained(enc.save_pretrained(tmp_path / "enc"))
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    assert torch.equal(enc(x), again(x))
    assert again.kind == enc.kind == "clip"


def test_pipeline_round_trip(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from medfair_audit.models.pipelines import load_pipeline, save_pipeline

    pipe = load_pipeline(tiny_models["t2medi"])
    again = load_pipeline(save_pipeline(pipe, tmp_path / "pipe"))
    for part in ("unet", "vae", "text_encoder"):
        _same_weights(getattr(pipe, part), getattr(again, part))
    assert not list((tmp_path / "pipe").rglob("*.bin"))  # safetensors only


def test_loaders_refuse_pickle_and_name_the_argument(tmp_path: Path) -> None:
    from medfair_audit.exceptions import ModelError
    from medfair_audit.models.classifier import SubgroupClassifier
    from medfair_audit.models.clip import CLIP

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "classifier.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really")
    for load, param in (
        (CLIP.from_pretrained, "clip"),
        (SubgroupClassifier.from_pretrained, "classifier"),
    ):
        with pytest.raises(ModelError, match="pickle") as err:
            load(tmp_path)
        assert err.value.param == param
    assert os.listdir(tmp_path)  # nothing removed


def test_demo_is_a_declared_list_of_stages() -> None:
    from medfair_audit import demo
    from medfair_audit.generation.engine import settings_hash

    assert demo.settings_hash is settings_hash  # one hash for shards and stages
    for attrs in (("sex",), ("sex", "age_band")):
        stages = demo.demo_stages(demo.DemoConfig(fast=True, attributes=attrs))
        names = [s.name for s in stages]
        assert len(set(names)) == len(names)
        for i, st in enumerate(stages):  # every input runs before the stage that reads it
            assert set(st.inputs) <= set(names[:i]), st.name
    assert tuple(names[3:]) == demo.ATTRIBUTE_STAGES
    for st in stages:  # any upstream change changes the key
        if st.inputs:
            same = {n: "a" for n in st.inputs}
            for n in st.inputs:
                assert settings_hash(st.key(same)) != settings_hash(st.key({**same, n: "b"}))


#: Where ``audit.json`` is read key by key: the result object and the typed frames' readers (its
#: writers, the audit's own stages, build it; the schema test checks the file itself).
AUDIT_JSON_READERS = ("medfair_audit/audit/result.py", "medfair_audit/metrics/results_json.py")
#: What consumes saved audits: these read typed attributes only.
AUDIT_CONSUMERS = (
    "medfair_audit/reporting", "medfair_audit/audit/paired.py", "medfair_audit/audit/views.py",
    "medfair_audit/audit/sequential.py", "medfair_audit/demo.py", "cli", "benchmarks", "scripts",
)  # fmt: skip


def _json_reads(tree: ast.AST) -> list[str]:
    """``x.data[...]``, ``x.data.get(...)`` and ``x.to_json()[...]``: a result read by key."""
    out = []
    for node in ast.walk(tree):
        base = None
        if isinstance(node, ast.Subscript):
            base = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "get":
                base = node.func.value
        if isinstance(base, ast.Attribute) and base.attr == "data":
            out.append(f"line {node.lineno}: .data")
        elif (
            isinstance(base, ast.Call)
            and isinstance(base.func, ast.Attribute)
            and base.func.attr == "to_json"
        ):
            out.append(f"line {node.lineno}: .to_json()")
    return out


def test_no_audit_json_key_is_read_outside_the_result():
    """Reports, the CLI, the demo, the benchmarks and the scripts read an audit through
    ``AuditResult``'s typed attributes: no key of its JSON, no ``audit.json`` opened by hand."""
    files = []
    for w in AUDIT_CONSUMERS:
        path = ROOT / w
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    bad = []
    for f in files:
        text = f.read_text()
        rel = str(f.relative_to(ROOT))
        bad += [f"{rel} {hit}" for hit in _json_reads(ast.parse(text))]
        # (benchmarks/audit.json, the audit benchmark's own record, is not an audit)
        if "read_audit_json(" in text or re.search(r"(?<!HERE) / \"audit\.json\"\)\.read", text):
            bad.append(f"{rel} opens audit.json itself")
    template = (ROOT / "medfair_audit/reporting/templates/report.html.j2").read_text()
    bad += [f"report.html.j2 reads {m}" for m in re.findall(r"\b\w+\.data\.\w+", template)]
    assert not bad, bad
    # the check itself finds such a read
    assert _json_reads(ast.parse('a.data["groups"]; b.data.get("x"); c.to_json()["y"]')) == [
        "line 1: .data", "line 1: .data", "line 1: .to_json()",
    ]  # fmt: skip


def test_the_readme_3d_commands_use_options_that_exist() -> None:
    """The commands of the README's 3-D section name options their commands have."""
    import re
    import shlex

    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## 3D volumes and MONAI models\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    commands, checked = _commands(), 0
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if not words or words[0] != "medfair":
            continue
        name = next(n for n in sorted(commands, key=len, reverse=True)
                    if words[1 : 1 + len(n.split())] == n.split())  # fmt: skip
        known = {o for p in commands[name].params for o in p.opts}
        for word in words:
            if word.startswith("--"):
                assert word in known, f"medfair {name}: no option {word}"
                checked += 1
    assert checked >= 15
