"""`dvc plots show` writes a page that needs no network: vendored Vega inlined, every loss log plotted."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from pipeline.core.offline_plots import (
    BUNDLES,
    TEMPLATE_PATH,
    VENDOR_DIR,
    dvc_render_versions,
    fetched_urls,
    inline_script,
    offline_problems,
    offline_template,
    read_sources,
)

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).with_name("dvc"))

# Vega and Vega-Lite in node, without a DOM: compile each spec dvc wrote into the page and render it to SVG
RENDER_JS = r"""
const fs = require("fs"), vm = require("vm"), path = require("path");
const [vendor, specsFile] = process.argv.slice(2);
for (const f of ["vega.min.js", "vega-lite.min.js"]) vm.runInThisContext(fs.readFileSync(path.join(vendor, f), "utf8"));
(async () => {
  const out = {};
  for (const [id, spec] of Object.entries(JSON.parse(fs.readFileSync(specsFile, "utf8")))) {
    const view = new vega.View(vega.parse(vegaLite.compile(spec).spec), { renderer: "none" });
    await view.runAsync();
    out[id] = await view.toSVG();
  }
  console.log(JSON.stringify(out));
})().catch(e => { console.error(e.message); process.exit(1); });
"""


def committed_html_template() -> str:
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    return config.get("plots", "html_template")


@pytest.fixture(scope="module")
def plots_page(tmp_path_factory) -> Path:
    """A fresh DVC project with the repo's template setting, one loss CSV and one PNG; `dvc plots show` run
    from a subfolder with a custom -o, the case a relative <script src> could not survive."""
    repo = tmp_path_factory.mktemp("plots_repo")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    run = lambda *cmd, cwd=repo: subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=True)
    run(DVC, "init", "--no-scm", "-q")
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots", dirs_exist_ok=True)
    run(DVC, "config", "plots.html_template", committed_html_template())
    reports = repo / "reports"
    reports.mkdir()
    (reports / "losses.csv").write_text("step,seconds,total,l1\n0,0.1,3.0,2.0\n10,0.9,2.0,1.5\n20,1.7,1.25,1.0\n")
    cv2.imwrite(str(reports / "sheet.png"), np.full((8, 8, 3), 200, np.uint8))
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": [{"reports/losses.csv": {"x": "step",
                                                                                      "y": ["total", "l1"]}},
                                                             "reports/sheet.png"]}))
    (repo / "sub").mkdir()
    run(DVC, "plots", "show", "-o", "../page", cwd=repo / "sub")
    return repo / "page" / "index.html"


def page_specs(html: str) -> dict[str, dict]:
    """The Vega-Lite spec of each plot div dvc_render wrote ("var spec = {...}; vegaEmbed(...)")."""
    found = re.finditer(r'<div id = "([^"]+)">\s*<script type = "text/javascript">\s*var spec = (.*?);\s*vegaEmbed',
                        html, re.S)
    return {m.group(1): json.loads(m.group(2)) for m in found}


def test_committed_template_is_built_from_the_vendored_bundles():
    # also checks each vendored file against the sha256 recorded from its npm tarball
    assert TEMPLATE_PATH.read_text(encoding="utf8") == offline_template()


def test_vendored_versions_are_the_ones_dvc_render_targets():
    sources = read_sources()
    assert {name: sources[name]["version"] for name in BUNDLES} == dvc_render_versions()
    for name in BUNDLES:
        assert f'"{sources[name]["version"]}"' in (VENDOR_DIR / sources[name]["file"]).read_text(encoding="utf8")
        assert "Redistribution and use" in (VENDOR_DIR / sources[name]["license_file"]).read_text(encoding="utf8")


def test_inline_script_strips_the_source_map_and_refuses_page_breakers():
    assert inline_script("x", "var a=1;\n//# sourceMappingURL=x.min.js.map\n").count("sourceMappingURL") == 0
    for bad in ('s="</script>"', 's="<!--"', 's="{plot_divs}"', 's="{scripts}"'):
        with pytest.raises(ValueError, match="cannot be inlined"):
            inline_script("x", bad)


def test_offline_problems_sees_remote_loads_not_links_or_script_text():
    assert offline_problems('<a href="https://vega.github.io">x</a><script>u="https://x/y.js"</script>') == []
    assert offline_problems('<img src="static/a.png"><img src="data:image/png;base64,AAAA">') == []
    assert offline_problems('<img src="//host/a.png">') == ["loads a remote URL: //host/a.png"]
    assert offline_problems('<script src="https://cdn.jsdelivr.net/npm/vega@5.20.2"></script>') == [
        "loads a remote URL: https://cdn.jsdelivr.net/npm/vega@5.20.2", "mentions a CDN"]


def test_dvc_plots_show_writes_a_self_contained_page(plots_page):
    html = plots_page.read_text(encoding="utf8")
    assert offline_problems(html) == []
    assert "<script src" not in html
    urls = fetched_urls(html)
    assert urls and all((plots_page.parent / url).is_file() for url in urls)  # the PNG, copied beside the page
    sources = read_sources()
    for name in BUNDLES:  # inlined, in load order
        code = (VENDOR_DIR / sources[name]["file"]).read_text(encoding="utf8").split("\n//# sourceMappingURL")[0]
        assert code[-2000:] in html
    positions = [html.index(f'data-bundle="{name}"') for name in BUNDLES]
    assert positions == sorted(positions) < [html.index("vegaEmbed('#")]


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the vendored Vega")
def test_vendored_vega_renders_the_spec_dvc_wrote(plots_page, tmp_path):
    specs = page_specs(plots_page.read_text(encoding="utf8"))
    assert len(specs) == 1  # its id is the CSV path relative to the cwd of `dvc plots show`
    (tmp_path / "specs.json").write_text(json.dumps(specs))
    (tmp_path / "render.js").write_text(RENDER_JS)
    proc = subprocess.run(["node", str(tmp_path / "render.js"), str(VENDOR_DIR), str(tmp_path / "specs.json")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    [svg] = json.loads(proc.stdout).values()
    assert svg.startswith("<svg") and "total" in svg and "l1" in svg  # both series in the legend


def test_every_training_loss_log_is_plotted():
    """... as a DVC plot (top-level `plots`) and as a PNG the `loss_curves` stage draws from it."""
    from tests.dvc_closure import expanded_stages

    dvc_yaml = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    stages = expanded_stages()
    out_paths = [next(iter(out)) if isinstance(out, dict) else out
                 for stage in stages.values() for out in stage.get("outs", [])]
    loss_logs = {path for path in out_paths if path.endswith("_losses.csv")}
    plotted = {path: props for entry in dvc_yaml["plots"] for path, props in entry.items()}
    drawn = stages["loss_curves"]
    pngs = {next(iter(out)) for out in drawn["plots"]}
    assert len(loss_logs) >= 11
    for path in sorted(loss_logs):
        assert path in plotted, f"{path} is not in dvc.yaml's top-level plots"
        assert plotted[path]["x"] == "step" and "seconds" not in plotted[path]["y"]
        assert path in drawn["deps"] and path in drawn["cmd"] and path.replace(".csv", ".png") in pngs, path
