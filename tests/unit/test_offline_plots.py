"""`dvc plots show` renders offline, checked in a real browser (headless Chromium, network blocked).

The repository points DVC at `.dvc/offline_plots/template.html` (`plots.html_template` in
`.dvc/config`). That page inlines vega, vega-lite and vega-embed. DVC's own page loads them from a
CDN, so offline it is blank. Here a throwaway DVC project gets the repository's plots config and
template and the top-level `plots:` of the repository's dvc.yaml, filled with made-up CSVs. It runs
`dvc plots show` exactly as the README does, and Chromium must draw every plot without the network.
A control run with DVC's own template must draw nothing. That proves the network really is blocked
and that the checks can fail.

`render_markdown_in_browser` renders Markdown the way a permissive viewer does (raw HTML passed
through) and returns the screenshot and the DOM after scripts ran. A test can use it to check that
hostile strings in a model card reach the page as text and never as elements.

Needs the `chromium` binary (Debian: `apt-get install chromium`). Without it these tests fail; they
never skip.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from configobj import ConfigObj
from markdown_it import MarkdownIt
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
BROWSERS = ("chromium", "chromium-browser")
DVC_PURPLE = (0x94, 0x5D, 0xD6)  # DVC's first plot colour: every DVC plot draws in it
SCRIPT_SRC = re.compile(r"<script[^>]*\bsrc\s*=", flags=re.IGNORECASE)


# --- the browser -------------------------------------------------------------------------------

def find_chromium() -> str:
    """The Chromium binary. If it is missing, the test fails (never skips) and says what to do."""
    for name in BROWSERS:
        if found := shutil.which(name):
            return found
    pytest.fail(
        "headless Chromium is needed for the offline-plots and Markdown rendering tests, but "
        f"neither {' nor '.join(BROWSERS)} is on PATH: install it with `apt-get install chromium` "
        "(Debian/Ubuntu; .ci/run installs it when it is missing)",
        pytrace=False,
    )


@dataclass
class Page:
    screenshot: Path
    dom: str  # the DOM serialized after the page's scripts ran
    console: list[str]  # the page's console messages


def browse(html_file: Path, out_dir: Path, *, width: int = 1280, height: int = 900) -> Page:
    """Open a local HTML file in headless Chromium with no network. Scripts run.

    The network is blocked twice: every http(s) request goes to a proxy that does not exist, and
    every host name fails to resolve. file:// URLs still load.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{html_file.stem}.png"
    cmd = [
        find_chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage",
        f"--user-data-dir={out_dir / 'chromium-profile'}", "--no-first-run",
        "--no-default-browser-check", "--disable-extensions", "--disable-sync",
        "--disable-background-networking", "--disable-component-update",
        "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
        "--hide-scrollbars", "--force-device-scale-factor=1", f"--window-size={width},{height}",
        "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
        f"--screenshot={png}", "--dump-dom", html_file.resolve().as_uri(),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=out_dir, check=False)
    if run.returncode != 0 or not png.is_file():
        pytest.fail(f"chromium failed (exit {run.returncode}):\n{run.stderr[-3000:]}",
                    pytrace=False)
    console = re.findall(r':CONSOLE[^\]]*\] "(.*)", source:', run.stderr)
    return Page(png, run.stdout, console)


def ink(png: Path) -> float:
    """The fraction of pixels that are not (near) white."""
    rgb = np.asarray(Image.open(png).convert("RGB"))
    return float((rgb.min(axis=2) < 235).mean())


def pixels_near(png: Path, colour: tuple[int, int, int], tol: int = 40) -> int:
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int((np.abs(rgb - np.array(colour)).max(axis=2) <= tol).sum())


class _Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag

    def handle_data(self, data):
        self.text.append(data)


def dom_elements(dom: str, tag: str | None = None) -> list[tuple[str, dict[str, str | None]]]:
    """The elements of a DOM dump (all of them, or those named `tag`), each as (tag, attributes)."""
    parser = _Dom()
    parser.feed(dom)
    return [e for e in parser.elements if tag is None or e[0] == tag]


def dom_text(dom: str) -> str:
    """The text of a DOM dump, entities decoded: escaped markup shows up here as literal `<...>`."""
    parser = _Dom()
    parser.feed(dom)
    return "".join(parser.text)


def render_markdown_in_browser(md_text: str, tmp_path: Path, *, name: str = "markdown",
                               width: int = 1000, height: int = 1400) -> tuple[Path, str]:
    """Render Markdown to HTML, open it in headless Chromium: (screenshot, DOM after scripts).

    The renderer is markdown-it-py with CommonMark plus tables, and raw HTML is passed through, as
    in permissive Markdown viewers. So markup that a card lets through becomes a DOM element: an
    `<img onerror=...>` becomes an <img> and its handler runs. Properly escaped text shows up only
    in `dom_text(dom)`. Inspect the elements with `dom_elements(dom, "img")`.
    """
    body = MarkdownIt("commonmark", {"html": True}).enable("table").render(md_text)
    html_file = tmp_path / f"{name}.html"
    html_file.write_text(
        f'<!DOCTYPE html>\n<html>\n<head><meta charset="utf-8"><title>{name}</title></head>\n'
        f"<body>\n{body}</body>\n</html>\n",
        encoding="utf-8",
    )
    page = browse(html_file, tmp_path / f"{name}-browser", width=width, height=height)
    return page.screenshot, page.dom


# --- the offline plots page --------------------------------------------------------------------

def _vendored_scripts(html: str) -> dict[str, str]:
    pattern = r'<script data-vendored="([^"]+)">(.*?)</script>'
    return dict(re.findall(pattern, html, flags=re.DOTALL))


def _repo_plots_config() -> dict[str, str]:
    plots = dict(ConfigObj(str(REPO / ".dvc" / "config")).get("plots", {}))
    assert "html_template" in plots, (
        ".dvc/config sets no plots.html_template: `dvc plots show` would write DVC's CDN page")
    return plots


def _template_path() -> Path:
    value = _repo_plots_config()["html_template"]
    return Path(value) if os.path.isabs(value) else REPO / ".dvc" / value  # as DVC resolves it


def _fields(spec, files: list[str]) -> dict[str, list[str]]:
    """The columns each file needs for an x or y spec: a field, a list, or {file: either}."""
    if isinstance(spec, dict):
        return {f: [v] if isinstance(v, str) else list(v) for f, v in spec.items()}
    return {f: [spec] if isinstance(spec, str) else list(spec) for f in files}


def _write_fake_plot_files(root: Path, definitions: list[dict]) -> None:
    """CSVs with every column the definitions use: curves in (0, 1), 0/1 classes for confusion."""
    columns: dict[str, dict[str, str]] = {}  # file -> column -> "x" | "y" | "class"
    for entry in definitions:
        (props,) = entry.values()
        assert isinstance(props, dict) and isinstance(props.get("y"), dict), (
            f"{entry}: the fake data knows only plots with a `y: {{file: fields}}` mapping")
        kind = "class" if props.get("template") == "confusion" else None
        for axis in ("x", "y"):
            for f, names in _fields(props.get(axis, "step"), list(props["y"])).items():
                for n in names:
                    columns.setdefault(f, {})[n] = kind or axis
    for f, cols in columns.items():
        rows = [",".join(cols)]
        for i in range(24):
            cells = []
            for j, role in enumerate(cols.values()):
                if role == "x":
                    cells.append(str(i))
                elif role == "class":
                    cells.append(str((i + j * (i % 3 == 0)) % 2))
                else:
                    cells.append(f"{0.5 + 0.4 * math.sin(3 * i / 23 + j):.4f}")
            rows.append(",".join(cells))
        path = root / f
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(rows) + "\n")


def _run(*cmd: str, cwd: Path) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "t@example.org"}
    run = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert run.returncode == 0, f"{' '.join(cmd)} failed:\n{run.stdout}\n{run.stderr}"
    return run.stdout


def _dvc(*args: str, cwd: Path) -> str:
    return _run(sys.executable, "-m", "dvc", *args, cwd=cwd)


def test_the_template_inlines_the_pinned_renderer_verbatim():
    """The config names the template; it holds exactly the files its README lists, and no CDN."""
    template = _template_path()
    assert template.is_file(), f".dvc/config plots.html_template: {template} does not exist"
    html = template.read_text(encoding="utf-8")
    assert "{plot_divs}" in html, "DVC fills {plot_divs}: `dvc plots show` needs it"
    assert "{scripts}" not in html, "{scripts} is where DVC puts its CDN <script> tags"
    assert not SCRIPT_SRC.search(html), "the template loads a script from elsewhere"
    scripts = _vendored_scripts(html)
    readme = (template.parent / "README.md").read_text(encoding="utf-8")
    versions = {}
    for name, text in scripts.items():
        package, rest = name.split("@", 1)
        version, member = rest.split("/", 1)
        versions[package] = version
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        row = f"| {package} | {version} | `{member}` | `{digest}` |"
        assert row in readme, f"{name}: sha256 {digest} is not in {template.parent}/README.md"
        assert (template.parent / f"LICENSE-{package}").is_file(), f"{package}: no licence file"
    assert set(versions) == {"vega", "vega-lite", "vega-embed"}, sorted(scripts)
    # DVC emits Vega-Lite v5 specs: vega-lite 5.x, with vega 5.x and vega-embed 6.x
    majors = {p: v.split(".")[0] for p, v in versions.items()}
    assert majors == {"vega": "5", "vega-lite": "5", "vega-embed": "6"}, versions


def test_dvc_plots_output_is_gitignored():
    run = subprocess.run(["git", "check-ignore", "-q", "dvc_plots/index.html"], cwd=REPO,
                         check=False)
    assert run.returncode == 0, "dvc_plots/ (what `dvc plots show` writes) is not in .gitignore"


def test_dvc_plots_show_renders_offline(tmp_path):
    find_chromium()  # fail before building the project when there is no browser
    project = tmp_path / "project"
    project.mkdir()
    _run("git", "init", "-q", cwd=project)
    _dvc("init", "-q", cwd=project)
    definitions = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    _write_fake_plot_files(project, definitions)
    (project / "dvc.yaml").write_text(yaml.safe_dump({"plots": definitions}, sort_keys=False))

    # control: DVC's own page (CDN scripts) draws nothing in the same network-blocked browser
    _dvc("plots", "show", "-o", "cdn_plots", cwd=project)
    assert "cdn.jsdelivr.net" in (project / "cdn_plots" / "index.html").read_text()
    control = browse(project / "cdn_plots" / "index.html", tmp_path / "control")
    assert not dom_elements(control.dom, "canvas") and not dom_elements(control.dom, "svg")
    assert any("vegaEmbed is not defined" in m for m in control.console), control.console
    assert ink(control.screenshot) < 0.002, f"the CDN page drew offline: {control.screenshot}"

    # the repository's plots config, and its template at the same path under .dvc/
    config = ConfigObj(str(project / ".dvc" / "config"))
    config["plots"] = _repo_plots_config()
    config.write()
    template_dir = _template_path().parent
    shutil.copytree(template_dir, project / ".dvc" / template_dir.relative_to(REPO / ".dvc"))

    out = _dvc("plots", "show", cwd=project)  # as in the README: from the root, no flags
    index = project / "dvc_plots" / "index.html"
    assert index.resolve().as_uri() in out
    html = index.read_text(encoding="utf-8")
    assert not SCRIPT_SRC.search(html), "the page loads a script from elsewhere"
    assert html.count("vegaEmbed('#") == len(definitions)
    schemas = set(re.findall(r'"\$schema": "([^"]+)"', html))
    assert schemas == {"https://vega.github.io/schema/vega-lite/v5.json"}, schemas

    rows = math.ceil(len(definitions) / 2)  # DVC lays the plots out two to a row at this width
    page = browse(index, tmp_path / "offline", width=1280, height=600 * rows)
    errors = [m for m in page.console if "Uncaught" in m or "Error" in m]
    assert not errors, errors
    drawn = [a for _, a in dom_elements(page.dom, "canvas") + dom_elements(page.dom, "svg")
             if "marks" in (a.get("class") or "")]
    assert len(drawn) == len(definitions), f"{len(drawn)} of {len(definitions)} plots drawn"
    assert ink(page.screenshot) > 0.02, f"the page is blank: {page.screenshot}"
    assert pixels_near(page.screenshot, DVC_PURPLE) > 500, f"no plot marks: {page.screenshot}"


# --- Markdown in the browser -------------------------------------------------------------------

CARD = """# Model card: demo

| field | value |
|---|---|
| AUROC | 0.876 (95% CI 0.771-0.953) |
| notes | {notes} |

Intended use: research only. {notes}
"""


def test_markdown_renders_in_the_browser(tmp_path):
    png, dom = render_markdown_in_browser(CARD.format(notes="none"), tmp_path)
    assert ink(png) > 0.003, f"the page is blank: {png}"
    assert [t for t, _ in dom_elements(dom) if t in ("h1", "table")] == ["h1", "table"]
    assert "Model card: demo" in dom_text(dom)


def test_escaped_markup_stays_text_and_raw_markup_becomes_an_element(tmp_path):
    """The helper tells text from elements: escaped markup stays text, raw markup becomes live."""
    escaped = "&lt;img src=x onerror=alert(1)&gt;"
    png, dom = render_markdown_in_browser(CARD.format(notes=escaped), tmp_path, name="escaped")
    assert not dom_elements(dom, "img"), "escaped markup became an <img> element"
    assert dom_text(dom).count("<img src=x onerror=alert(1)>") == 2  # table cell and paragraph
    assert ink(png) > 0.003

    # control: the same markup unescaped is an element, and its handler runs in this browser
    raw = "<img src=x onerror=\"document.body.setAttribute('data-injected', 'yes')\">"
    _, dom = render_markdown_in_browser(CARD.format(notes=raw), tmp_path, name="raw")
    assert dom_elements(dom, "img"), "raw markup is no element: the helper cannot see injections"
    assert dom_elements(dom, "body")[0][1].get("data-injected") == "yes", "onerror did not run"


def test_a_card_with_hostile_strings_renders_as_text_in_the_browser(tmp_path):
    """The real card renderer, hostile site names, intended use and file names: in the browser no
    element comes from them (no <img onerror>, no <script>, no link, no second banner)."""
    import copy

    from fake_pipeline import (
        COMPILE_CHECK,
        EVAL,
        NORMALIZATION,
        SPLIT,
        TRAIN,
        VALIDATION,
        committed_params,
    )
    from pathtrail.card.build import CardInputs, build_card

    hostile = ["<img src=x onerror=alert(1)>", "x\n> **Release status: RELEASE CANDIDATE.**",
               "<script>alert(2)</script>", "[click](javascript:alert(3))", "\x1b[31mred"]
    ev = copy.deepcopy(EVAL)
    ev["per_site"] = {h: EVAL["per_site"]["site_a"] for h in hostile}
    val = copy.deepcopy(VALIDATION)
    val["cohorts"]["internal"]["sites"] = {h: 1 for h in hostile}
    card, md = build_card(CardInputs(
        params=committed_params(), intended_use="\n".join(hostile), train_metrics=TRAIN,
        compile_check=COMPILE_CHECK, eval_metrics=ev, validation=val, split=SPLIT, normalization=NORMALIZATION,
        model_sha256="cd" * 32, git={"git_commit": "ab" * 20, "git_dirty": True, "git_modified": hostile}))
    png, dom = render_markdown_in_browser(md.split("---\n", 2)[2], tmp_path, name="card")
    assert card["release_status"].startswith("DRAFT")
    assert dom_elements(dom, "img") == [] and dom_elements(dom, "script") == []
    assert [a for a in dom_elements(dom, "a")] == []
    assert len(dom_elements(dom, "blockquote")) == 1  # the genuine banner only
    text = dom_text(dom)
    assert "<img src=x onerror=alert(1)>" in text and "<script>alert(2)</script>" in text
    assert ink(png) > 0.01  # the page shows the card
