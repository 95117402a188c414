"""`medfair report`: the before-and-after comparison in HTML, Markdown and LaTeX."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medfair_audit import AuditConfig, run_audit
from medfair_audit.generation import GenerationConfig
from medfair_audit.remediation import RemediationConfig, RemediationJob, remediate
from medfair_audit.reporting.compare import write_report
from medfair_audit.reporting.tables import headline_rows, load_audit
from medfair_audit.target import parse_target
from tests.cli.test_cli import assert_one_line_error, run

PROMPTS = ["Axial FLAIR MRI of the brain showing a glioma.", "Axial T1-weighted MRI <b>x</b>."]
TARGET = dataclasses.replace(parse_target("male=0.58,female=0.42"), name="BraTS18 (test)")


def _audit(models, checkpoint, out, reference):
    return run_audit(
        AuditConfig(
            checkpoint=checkpoint,
            classifier=models["classifier"],
            prompts=PROMPTS,
            target=TARGET,
            out=out,
            reference=reference,
            generation=GenerationConfig(n_per_prompt=6, seed=4, steps=2, shard_size=3),
            n_boot=50,
        )
    )


@pytest.fixture(scope="module")
def audits(tiny_models, small_phantom, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    fair = root / "fair"
    remediate(
        RemediationJob(
            checkpoint=tiny_models["t2medi"],
            classifier=tiny_models["classifier"],
            target=TARGET,
            prompts=PROMPTS,
            out=fair,
            config=RemediationConfig(
                steps=2,
                batch_per_prompt=2,
                sampling_steps=2,
                lora_rank=2,
                lr=0.05,
                audit_images=2,
                audit_steps=2,
                warmup=1,
            ),
            image_encoders=[(tiny_models["clip"], 1.0)],
        )
    )
    _audit(tiny_models, tiny_models["t2medi"], root / "before", small_phantom)
    _audit(tiny_models, fair, root / "after", small_phantom)
    return root


def test_html_report_is_self_contained_and_compares(audits, tmp_path):
    out = write_report([audits / "before" / "audit.json", audits / "after"], tmp_path / "r.html")
    html = out.read_text()
    assert 'id="headline-table"' in html and "Δ after − before" in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html  # prompts are escaped
    # Nothing is fetched from elsewhere: every image is a data URI, no script, no stylesheet link.
    srcs = re.findall(r'src="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<script" not in html and "<link" not in html and "http://" not in html
    assert 'id="paired"' in html and "12 image pairs" in html
    assert 'id="paired-table"' in html and "McNemar exact p" in html
    assert "The measuring instrument" in html and "Methods" in html
    assert "against BraTS18 (test)" in html  # the target's name in the title


def test_paired_summary_matches_the_image_tables(audits):
    from medfair_audit.reporting.html import paired_images

    before, after = load_audit(audits / "before", "before"), load_audit(audits / "after", "after")
    paired = paired_images(before, after)
    a = pd.read_csv(audits / "before" / "images.csv")
    b = pd.read_csv(audits / "after" / "images.csv")
    both = a.merge(b, on=["prompt_index", "seed"], suffixes=("_a", "_b"))
    assert len(both) == 12 == paired["summary"]["n_pairs"]  # same seeds in both audits
    changed = (both.predicted_a != both.predicted_b).mean()
    assert paired["summary"]["changed_group"] == pytest.approx(changed)
    assert paired["summary"]["mean_abs_pixel_change"] > 0  # remediation changed the images
    assert [len(p["before"]) for p in paired["pairs"]] == [6, 6]


def test_markdown_and_latex_tables_carry_the_audit_numbers(audits, tmp_path):
    paths = [audits / "before" / "audit.json", audits / "after" / "audit.json"]
    docs = [json.loads(p.read_text()) for p in paths]
    md = write_report(paths, tmp_path / "t.md").read_text()
    tex = write_report(paths, tmp_path / "t.txt", fmt="latex").read_text()
    rows = headline_rows([load_audit(p, str(i)) for i, p in enumerate(paths)])
    lines = md.splitlines()
    table = [line for line in lines[: lines.index("", 3)] if line.startswith("|")]
    assert len(table) == 2 + len(rows)
    male = next(line for line in table if line.startswith("| male share, classifier's labels"))
    cells = [c.strip() for c in male.strip("|").split("|")]
    values = [d["proportions"]["raw"]["male"]["value"] for d in docs]
    assert cells[2].startswith(f"{100 * values[0]:.1f}%") and cells[3].startswith(
        f"{100 * values[1]:.1f}%"
    )
    delta = values[1] - values[0]
    assert cells[4] == f"{'+' if delta >= 0 else '−'}{100 * abs(delta):.1f} pp"
    corrected = next(line for line in table if line.startswith("| male share, corrected (PACC)"))
    assert corrected.split("|")[2].strip() == "58.0%"  # the target column
    kl = next(line for line in table if line.startswith("| KL(target‖generated), PACC"))
    v = docs[1]["distances"]["pacc"]["kl_target_to_generated"]
    if v["value"] is None:  # censored: the bound, never a point value
        assert f"≥ {v['bound']['at_least']:.4f} (censored)" in kl
    else:
        assert f"{v['value']:.4f} [{v['ci'][0]:.4f}, {v['ci'][1]:.4f}]" in kl
    assert "worst prompt \\|gap\\|" in md and "McNemar exact p" in md  # dispersion and pairs
    # LaTeX: booktabs, escaped percent signs, the same number of cells on every row.
    for rule in ("\\toprule", "\\midrule", "\\bottomrule", "\\begin{tabular}{lrrrr}"):
        assert rule in tex
    body = tex[tex.index("\\midrule") : tex.index("\\bottomrule")].splitlines()[1:]
    assert len(body) == len(rows) and all(line.count(" & ") == 4 for line in body)
    assert "58.0\\%" in tex and re.search(r"[^\\]%", body[0]) is None
    assert "tab:medfair-paired" in tex and "McNemar" in tex


def test_censored_values_show_as_bounds_and_give_no_change(audits):
    before, after = load_audit(audits / "before", "before"), load_audit(audits / "after", "after")
    entry = {
        "value": None,
        "ci": [0.0, 0.023],
        "method": "m",
        "censored": "below",
        "bound": {"at_most": 0.023},
    }
    before.result.data["proportions"]["pacc"]["female"] = entry
    rows = headline_rows([before, after])
    row = next(r for r in rows if r["measure"] == "female share, corrected (PACC)")
    assert row["cells"][0]["bound"] == ("≤", 0.023) and row["deltas"] == [None]
    from medfair_audit.reporting.tables import format_rows

    _, text = format_rows([before, after])
    cell = next(r for r in text if r[0] == "female share, corrected (PACC)")
    assert cell[2].startswith("≤ 2.3% (censored)") and cell[4] == "–"


def test_a_single_audit_renders_alone(audits, tmp_path):
    html = write_report([audits / "before"], tmp_path / "one.html", labels=["t2medi"]).read_text()
    assert 'id="headline-table"' in html and "Δ" not in html and 'id="paired"' not in html
    # audit.html written by the audit comes from the same template.
    own = (audits / "before" / "audit.html").read_text()
    assert 'id="headline-table"' in own and "The measuring instrument" in own


def test_cli_report_formats_and_bad_input(capsys, audits, tmp_path):
    a, b = audits / "before" / "audit.json", audits / "after" / "audit.json"
    for fmt, needle in (("html", "<!doctype html>"), ("md", "| measure |"), ("latex", "\\toprule")):
        out = tmp_path / f"r.{fmt}"
        code, _stdout, err = run(
            capsys, "report", a, b, "--labels", "old,new", "--out", out, "--format", fmt
        )
        assert code == 0, err
        assert needle in out.read_text() and "old" in out.read_text()
    other = tmp_path / "other"
    shutil.copytree(audits / "after", other, ignore=shutil.ignore_patterns("shards"))
    doc = json.loads((other / "audit.json").read_text())
    doc["target"] = {"female": 0.5, "male": 0.5}
    (other / "audit.json").write_text(json.dumps(doc))
    bad_schema = tmp_path / "bad.json"
    bad_schema.write_text(json.dumps({"schema_version": 1, "groups": ["female", "male"]}))
    cases = [
        ([a, b, "--labels", "x"], "--labels", "2"),
        ([a, tmp_path / "missing.json"], "AUDIT_JSON", "does not exist"),
        ([a, bad_schema], "AUDIT_JSON", "schema_version 1; this medfair reads version 2"),
        ([a, other], "AUDIT_JSON", "another target"),
        ([a, b, "--format", "pdf"], "--format", "html, md, latex"),
        ([a, b, "--figure", bad_schema], "--figure", "not a PNG"),
    ]
    for args, flag, needle in cases:
        code, _, err = run(capsys, "report", *args, "--out", tmp_path / "no" / "r.html")
        assert_one_line_error(code, err, flag, needle)
    assert not (tmp_path / "no").exists()
    png = tmp_path / "fairness-quality-tradeoff.png"
    from medfair_audit.reporting import image_grid_png

    png.write_bytes(image_grid_png(np.zeros((1, 1, 4, 4), dtype=np.uint8), cols=1))
    code, _, err = run(capsys, "report", a, b, "--figure", png, "--out", tmp_path / "f.html")
    assert code == 0, err
    html = (tmp_path / "f.html").read_text()
    assert "fairness quality tradeoff</figcaption>" in html


def test_columns_change_only_within_one_classifier(audits, tmp_path):
    """A third audit by another classifier gets no Δ against the first two, and the evaluator
    table says which classifier the remediation was tuned against."""
    from medfair_audit.reporting.tables import comparisons, evaluator_rows

    other = tmp_path / "other-clf"
    shutil.copytree(audits / "after", other)
    doc = json.loads((other / "audit.json").read_text())
    doc["config"] = {**doc["config"], "classifier_sha256": "f" * 64, "classifier": "x/evaluator"}
    doc["config"]["remediation"] = {**doc["config"]["remediation"], "same_classifier": False}
    (other / "audit.json").write_text(json.dumps(doc))
    cols = [load_audit(audits / s, s) for s in ("before", "after")] + [load_audit(other, "eval")]
    assert comparisons(cols) == [(0, 1)]
    _, rows = evaluator_rows(cols)
    assert [r[3] for r in rows] == ["yes", "yes", "no (independent)"]
    assert rows[0][4] == "2 of 2 were training prompts"
    md_rows = headline_rows(cols)
    assert all(len(r["deltas"]) == 1 for r in md_rows)
    after = json.loads((audits / "after" / "audit.json").read_text())
    assert after["config"]["remediation"]["same_classifier"] is True
    assert any("tuned against" in w for w in after["warnings"])


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (Debian package 'chromium')")
def test_report_renders_in_headless_chromium(audits, tmp_path):
    from PIL import Image

    out = write_report([audits / "before", audits / "after"], tmp_path / "report.html")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,1400",
    ]
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", out.as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
    )
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", out.as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
        text=True,
    ).stdout
    assert 'id="headline-table"' in dom and "male share, corrected (PACC)" in dom
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (1400, 1200)
    ink = (pixels < 200).mean()
    assert ink > 0.01 and pixels.std() > 10  # text, table borders and the plot drew something
    top = pixels[:400]
    assert (top < 128).mean() > 0.002  # the title and the headline table sit near the top


def test_labels_with_table_and_tex_specials_are_escaped(audits, tmp_path):
    paths = [audits / "before" / "audit.json", audits / "after" / "audit.json"]
    labels = ["a|b <x>", "50% & {c}"]
    md = write_report(paths, tmp_path / "t.md", labels=labels).read_text()
    header = next(line for line in md.splitlines() if line.startswith("| "))
    assert "a\\|b &lt;x&gt;" in header
    # every row of the headline table has as many cells as its header
    table = [line for line in md.splitlines()[: md.splitlines().index("", 3)] if line[:1] == "|"]
    width = len(re.split(r"(?<!\\)\|", table[0]))
    assert all(len(re.split(r"(?<!\\)\|", line)) == width for line in table)
    tex = write_report(paths, tmp_path / "t.txt", labels=labels, fmt="latex").read_text()
    assert r"a\textbar{}b \textless{}x\textgreater{}" in tex and r"50\% \& \{c\}" in tex
    assert "worst prompt \\textbar{}gap\\textbar{}" in tex


def _hostile(tag):
    """Text that breaks out of HTML, Markdown tables and LaTeX if any step fails to escape it."""
    return (
        f'{tag}<script>document.body.dataset.pwned="{tag}"</script>'
        '<img src=x onerror="document.body.dataset.pwned=1"> --> | & % \\ {} $ _ # ~ ^ '
        "two\n\nlines"
    )


def _hostile_copy(src, dst):
    """The audit at ``src`` with its groups, prompts, target name and paths made hostile."""
    shutil.copytree(src, dst)
    doc = json.loads((src / "audit.json").read_text())
    names = {g: _hostile(g.upper()) for g in doc["groups"]}
    names.update({p: p + _hostile("P") for p in doc["config"]["prompts"]})
    names[doc["target_name"]] = _hostile("T")

    def swap(node):
        if isinstance(node, dict):
            return {names.get(k, k): swap(v) for k, v in node.items()}
        if isinstance(node, list):
            return [swap(v) for v in node]
        return names.get(node, node) if isinstance(node, str) else node

    doc = swap(doc)
    doc["config"]["checkpoint"] = "/data/" + _hostile("C")
    (dst / "audit.json").write_text(json.dumps(doc))
    table = pd.read_csv(src / "images.csv", keep_default_na=False)
    table = table.rename(columns={f"p_{g}": f"p_{n}" for g, n in names.items()})
    table["prompt"] = table.prompt.map(names)
    table["predicted"] = table.predicted.map(names)
    table.to_csv(dst / "images.csv", index=False)
    for g, n in list(names.items())[:2]:
        from medfair_audit.audit.result import grid_name

        (dst / f"grid_{g}.png").rename(dst / grid_name(n))
    return dst


class _Tags(__import__("html.parser").parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_every_user_string_is_escaped_in_html_markdown_and_latex(audits, tmp_path):
    """Hostile group names, prompts, labels, target name and paths: the HTML has no element or
    handler they did not come with (and a browser runs none of them), every Markdown table row
    keeps its cell count, and LaTeX gets only escaped specials."""
    from medfair_audit.audit import AuditResult
    from medfair_audit.reporting import render_audit_html

    before = _hostile_copy(audits / "before", tmp_path / "before")
    after = _hostile_copy(audits / "after", tmp_path / "after")
    labels = [_hostile("L1"), _hostile("L2")]
    html = write_report([before, after], tmp_path / "r.html", labels=labels).read_text()
    single = render_audit_html(AuditResult.load(before))
    for page in (html, single):
        parsed = _Tags()
        parsed.feed(page)
        assert not [t for t, _ in parsed.tags if t in ("script", "iframe", "object")]
        assert not [a for _, attrs in parsed.tags for a in attrs if a.startswith("on")]
        assert all(
            v.startswith("data:image/png;base64,") for t, a in parsed.tags if t == "img"
            for k, v in a.items() if k == "src"
        )  # fmt: skip
        text = "".join(parsed.text)  # the hostile strings are there, as text
        assert '<script>document.body.dataset.pwned="FEMALE"</script>' in text

    md = write_report([before, after], tmp_path / "r.md", labels=labels).read_text()
    assert "<script" not in md and "<img" not in md
    assert md.splitlines()[0].count("-->") == 1 and md.splitlines()[0].endswith("-->")
    for block in md.split("\n\n"):
        rows = [line for line in block.splitlines() if line.startswith("|")]
        if rows:  # every row of a table has its header's number of cells
            widths = {len(re.split(r"(?<!\\)\|", line)) for line in rows}
            assert len(widths) == 1, rows
    assert "L1&lt;script&gt;" in md and "FEMALE&lt;script&gt;" in md

    tex = write_report([before, after], tmp_path / "r.tex", labels=labels).read_text()
    assert "<" not in tex and ">" not in tex
    assert r"L1\textless{}script\textgreater{}" in tex and r"\% \textbackslash{} \{\}" in tex
    from medfair_audit.reporting.latex import _LATEX_SPECIAL

    math = tex.split("\n", 1)[1]  # the symbols' own math forms removed, nothing else may remain
    for form in sorted({v for v in _LATEX_SPECIAL.values() if v.startswith("$")}, key=len)[::-1]:
        math = math.replace(form, "")
    assert not re.search(r"(?<!\\)[%#$_^~]", math)  # no unescaped special after the comment
    for tabular in re.findall(r"\\begin\{tabular\}.*?\\end\{tabular\}", tex, re.S):
        rows = [r for r in tabular.splitlines() if r.endswith("\\\\")]
        assert len({len(re.findall(r"(?<!\\)&", r)) for r in rows}) == 1, rows
        assert "" not in [r.strip() for r in tabular.splitlines()]  # no paragraph break


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (Debian package 'chromium')")
def test_hostile_strings_run_nothing_in_headless_chromium(audits, tmp_path):
    """The browser's DOM after load: the payloads' handlers never ran and no element of theirs
    exists, while their text is shown."""
    before = _hostile_copy(audits / "before", tmp_path / "before")
    after = _hostile_copy(audits / "after", tmp_path / "after")
    out = write_report(
        [before, after], tmp_path / "r.html", labels=[_hostile("L1"), _hostile("L2")]
    )
    dom = subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=2000", "--dump-dom", out.as_uri(),
        ],
        check=True, capture_output=True, timeout=120, text=True,
    ).stdout  # fmt: skip
    assert 'id="headline-table"' in dom
    assert "data-pwned" not in dom  # no onerror or script ran
    assert "<script" not in dom and 'src="x"' not in dom
    assert "L1&lt;script&gt;document.body.dataset.pwned" in dom  # shown as text


def test_the_plot_draws_a_value_that_lies_outside_its_interval():
    """A corrected share may sit outside its percentile interval (bootstrap skew, or a
    simplex-constrained value); the whisker must still span the interval, not fail."""
    from medfair_audit.audit.result import AuditResult
    from medfair_audit.reporting import proportion_plot_png

    audit = {
        "groups": ["a", "b"],
        "target": {"a": 0.5, "b": 0.5},
        "default_reading": "pacc",
        "proportions": {
            "raw": {"a": {"value": 0.3, "ci": [0.2, 0.4]}, "b": {"value": 0.7, "ci": [0.6, 0.8]}},
            "pacc": {
                "a": {"value": 0.03, "ci": [0.05, 0.2]},  # below its interval
                "b": {"value": 0.97, "ci": [0.8, 0.95]},  # above it
            },
        },
    }
    result = AuditResult.from_json(audit)
    assert proportion_plot_png({"m": result}).startswith(b"\x89PNG")


def _renderer_symbols() -> set[str]:
    """Every non-ASCII character in the sources of what writes report text (a superset of what
    the renderers can emit: docstrings and comments are scanned too)."""
    from pathlib import Path

    import medfair_audit

    root = Path(medfair_audit.__file__).parent
    files = [*(root / "reporting").glob("*.py"), root / "audit" / "result.py",
             root / "metrics" / "estimates.py", root / "audit" / "readers.py"]  # fmt: skip
    return {ch for f in files for ch in f.read_text(encoding="utf-8") if ord(ch) > 127}


def test_every_symbol_the_renderers_write_has_a_pdflatex_form():
    from medfair_audit.reporting.latex import _LATEX_SPECIAL, _latex

    symbols = _renderer_symbols()
    assert {"≥", "≤", "±", "−", "×", "–"} <= symbols  # the scan sees what the tables use
    import unicodedata

    for ch in sorted(symbols):
        out = _latex(f"a{ch}b")
        latin = ord(ch) < 0x250 and unicodedata.category(ch).startswith("L")
        if latin and ch not in _LATEX_SPECIAL:
            assert out == f"a{ch}b"  # a Latin letter: LaTeX reads it as UTF-8 input
            continue
        assert out.isascii(), (ch, out)
        assert "?" not in out, f"no rule for {ch!r} (U+{ord(ch):04X})"
    assert _latex("männlich") == "männlich"  # Latin letters pass (UTF-8 input)
    assert _latex("男") == "?"  # what pdflatex cannot set is never passed through


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
@pytest.mark.parametrize("example", ["example", "example/attributes"])
def test_the_committed_example_report_tex_compiles_with_pdflatex(example, tmp_path):
    from pathlib import Path

    table = Path(__file__).resolve().parents[2] / "reports" / example / "report.tex"
    assert table.read_text(encoding="utf-8").isascii()
    (tmp_path / "doc.tex").write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n"
        "\\usepackage[margin=1cm,landscape]{geometry}\n"
        f"\\begin{{document}}\n\\input{{{table}}}\n\\end{{document}}\n"
    )
    done = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 0


def _chromium_flags(tmp_path, width):
    return [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={width},1000",
    ]  # fmt: skip


_PROBE = (
    "<script>const d = document.documentElement; document.body.insertAdjacentHTML('beforeend', "
    '\'<div id="probe" data-scroll="\' + d.scrollWidth + \'" data-client="\' + d.clientWidth '
    "+ '\"></div>')</script>"
)


def _page_width(report, tmp_path, width):
    """(scrollWidth, clientWidth) of the page in headless Chromium at ``width`` px (measured by a
    script added to a copy: the report itself runs none)."""
    probe = tmp_path / f"probe-{report.stem}-{width}.html"
    probe.write_text(report.read_text().replace("</body>", _PROBE + "</body>"))
    dom = subprocess.run(
        [CHROMIUM, *_chromium_flags(tmp_path, width), "--dump-dom", probe.as_uri()],
        check=True, capture_output=True, timeout=120, text=True,
    ).stdout  # fmt: skip
    found = re.search(r'id="probe" data-scroll="(\d+)" data-client="(\d+)"', dom)
    assert found, dom[-500:]
    return int(found[1]), int(found[2])


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (Debian package 'chromium')")
def test_no_report_is_wider_than_the_page_at_800_and_1400_px(audits, tmp_path):
    """The headline figure, the image grids and the widest tables (four columns, six joint
    cells) stay inside the page: nothing scrolls the page sideways (a wide table scrolls in
    its own box)."""
    example = Path(__file__).resolve().parents[2] / "reports" / "example"
    sides = ["before", "after", "before-trainclf", "after-trainclf"]
    reports = [
        write_report([audits / "before", audits / "after"], tmp_path / "tiny.html"),
        write_report([example / s for s in sides], tmp_path / "one.html"),
        write_report([example / "attributes" / s for s in sides], tmp_path / "two.html"),
    ]
    for report in reports:
        assert "<img" in report.read_text()
        for width in (800, 1400):
            scroll, client = _page_width(report, tmp_path, width)
            assert 0 < scroll <= client, (report.name, width, scroll, client)


def _toy_quality(collapse: bool) -> dict:
    """A quality block over features where 'female' is intact or drawn from one prototype."""
    from medfair_audit.audit.quality import quality_by_group
    from medfair_audit.metrics.accumulators import FeatureMoments

    rng = np.random.default_rng(7)
    dim, n = 12, 128
    centres = np.stack([np.full(dim, 2.0), np.full(dim, -2.0)])  # female, male
    ref = np.concatenate([c + rng.normal(size=(n, dim)) for c in centres])
    female = centres[0] + rng.normal(size=(n, dim))
    if collapse:
        female = centres[0] + rng.normal(size=dim) + 0.02 * rng.normal(size=(n, dim))
    gen = [female, centres[1] + rng.normal(size=(n, dim))]
    moments = [FeatureMoments(dim).update(g) for g in gen]
    quality, _ = quality_by_group(
        moments, gen, ref, np.repeat([0, 1], n), ["female", "male"], draws=4
    )
    return quality


def test_quality_by_group_names_a_collapsed_group_in_every_format(audits, tmp_path):
    """The section's rows carry the block's numbers, and its reading says in words that the
    remediated model's female recall and coverage fell and that the group collapsed."""
    from medfair_audit.reporting.tables import AuditColumn

    cols = [load_audit(audits / s, s) for s in ("before", "after")]
    before, after = _toy_quality(False), _toy_quality(True)
    docs = [dict(cols[0].result.data, quality=before), dict(cols[1].result.data, quality=after)]
    for i, d in enumerate(docs):
        d["groups"] = ["female", "male"]
        root = tmp_path / ("before", "after")[i]
        root.mkdir()
        (root / "audit.json").write_text(json.dumps(d))
        shutil.copy(audits / ("before", "after")[i] / "images.csv", root / "images.csv")
    paths = [tmp_path / "before", tmp_path / "after"]
    md = write_report(paths, tmp_path / "q.md").read_text()
    tex = write_report(paths, tmp_path / "q.tex", fmt="latex").read_text()
    html = write_report(paths, tmp_path / "q.html").read_text()
    n = str(after["equal_n"])
    rec_b = before["by_group"]["female"]["at_n"][n]["prdc"]["recall"]["mean"]
    rec_a = after["by_group"]["female"]["at_n"][n]["prdc"]["recall"]["mean"]
    assert rec_a < 0.1 < 0.8 < rec_b
    reading = f"female recall fell from {rec_b:.2f} (before) to {rec_a:.2f} (after) at n = {n}"
    prototypes = "female in after: drawn from a few prototypes"
    for text in (md, html):
        assert "Quality by group" in text and reading in text and prototypes in text
    assert reading[:1].upper() + reading[1:] in tex and "tab:medfair-quality" in tex
    row = next(r for r in md.splitlines() if r.startswith(f"| female | recall (n = {n})"))
    assert f"{rec_b:.2f} ±" in row and f"{rec_a:.2f} ±" in row
    assert md.count("drawn from a few prototypes (low") == 1  # not the intact male group
    vendi = next(r for r in md.splitlines() if r.startswith("| female | Vendi score (n = 32)"))
    assert f"{after['by_group']['female']['vendi']['value']:.2f} [" in vendi
    blocks = [after["by_group"]["female"]["vendi"]["blocks"]]
    blocks.append(before["by_group"]["female"]["vendi"]["blocks"])
    for b in blocks:  # a t interval over fewer than 5 blocks says how many it had
        assert (f"({b} blocks)" in vendi) == (b < 5)
    from medfair_audit.audit.result import AuditResult
    from medfair_audit.metrics.results import Vendi
    from medfair_audit.reporting.quality import _cell

    assert _cell(Vendi(n=32, blocks=2, value=5.3, ci=(1.0, 14.2)), "") == (
        "5.30 [1.00, 14.20] (2 blocks)"
    )
    assert "blocks" not in _cell(Vendi(n=32, blocks=8, value=5.3, ci=(4.0, 6.0)), "")
    # a quality block without these measures (version 1) renders without the section
    old = [
        AuditColumn(c.label, AuditResult.from_json(dict(c.result.to_json(), quality=None)))
        for c in cols
    ]
    from medfair_audit.reporting.markdown import render_markdown

    assert "Quality by group" not in render_markdown(old)
