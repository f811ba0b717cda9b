"""The README and the docs site: generated pages current, the site builds strictly, the examples
run, the set-up commands are the ones CI runs, and no page or test cites internal tracker items."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from darkpose.service.commands import docs as docs_command
from tests.api.conftest import ServerProcess
from tests.conftest import IMAGES, REPO, missing_requirement

README = REPO / "README.md"
DOCS = REPO / "docs"
#: A coco-mini photo with 6 persons (the examples' ``photo.jpg``).
PHOTO = IMAGES / "000000211325.jpg"
#: Pages other parts of the project write; each must exist and be in the nav.
PAGES = (
    "index.md",
    "install.md",
    "first-start.md",
    "http-api.md",
    "http-reference.md",
    "python-api.md",
    "cli.md",
    "configuration.md",
    "models.md",
    "detectors.md",
    "accuracy.md",
    "video.md",
    "export.md",
    "deployment.md",
    "security.md",
    "benchmarks.md",
    "development.md",
    "contracts.md",
)


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "darkpose.service.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def _photo(tmp_path: Path) -> Path:
    if not PHOTO.is_file():
        pytest.skip(f"needs the coco-mini photo {PHOTO} (../shared beside the checkout)")
    return Path(shutil.copy(PHOTO, tmp_path / "photo.jpg"))


# --- generated pages ----------------------------------------------------------------------------


def test_generated_docs_are_current() -> None:
    stale = [str(p.relative_to(REPO)) for p in docs_command.stale_files(REPO)]
    assert not stale, f"stale generated docs {stale}: run `{docs_command.REGENERATE}` in {REPO}"


def test_every_setting_has_a_description() -> None:
    from darkpose.service.settings import setting_fields

    missing = [name for name, f in setting_fields().items() if not f.description]
    assert not missing, f"expected a description= for every setting, got none for {missing}"


def test_configuration_page_lists_every_setting() -> None:
    from darkpose.service.settings import ENV_PREFIX, setting_fields

    page = (DOCS / "configuration.md").read_text()
    for name in setting_fields():
        assert f"`{ENV_PREFIX}{name.upper()}`" in page, name


def test_docs_check_fails_on_a_stale_copy_and_regenerates_it(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    shutil.copy(README, tmp_path / "README.md")
    (tmp_path / "docs" / "configuration.md").write_text("# Configuration\n\nold\n")
    proc = _cli("docs", "--check", "--root", str(tmp_path))
    assert proc.returncode == 1, proc.stderr
    assert "stale: docs/configuration.md" in proc.stderr
    assert f"regenerate with: {docs_command.REGENERATE}" in proc.stderr
    assert _cli("docs", "--root", str(tmp_path)).returncode == 0
    assert _cli("docs", "--check", "--root", str(tmp_path)).returncode == 0
    assert (tmp_path / "docs" / "configuration.md").read_text() == (
        DOCS / "configuration.md"
    ).read_text()


def test_docs_refuses_a_root_without_readme(tmp_path: Path) -> None:
    proc = _cli("docs", "--root", str(tmp_path))
    assert proc.returncode == 2
    assert "--root: expected the repository root (README.md and docs/)" in proc.stderr


def test_openapi_json_is_the_apps_document() -> None:
    doc = json.loads((DOCS / "openapi.json").read_text())
    assert "/pose" in doc["paths"] and "PoseResponse" in doc["components"]["schemas"]
    reference = (DOCS / "http-reference.md").read_text()
    for path in doc["paths"]:
        assert f" {path}`" in reference, path


# --- the site -----------------------------------------------------------------------------------


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        missing_requirement("mkdocs and mkdocs-material are not installed (extra docs)")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-q",
            "-f",
            str(REPO / "mkdocs.yml"),
            "-d",
            str(tmp_path / "site"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for page in PAGES:
        html = "index.html" if page == "index.md" else f"{page[:-3]}/index.html"
        assert (tmp_path / "site" / html).is_file(), page


def test_nav_names_every_page() -> None:
    nav = (REPO / "mkdocs.yml").read_text()
    for page in PAGES:
        assert (DOCS / page).is_file(), page
        assert f": {page}" in nav, f"mkdocs.yml nav: expected {page}"


# --- README -------------------------------------------------------------------------------------


def test_readme_is_a_short_front_door() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"expected README.md ≤ 250 lines, got {len(lines)}"


def test_readme_set_up_commands() -> None:
    """Two set-up commands: install + serve, and CI's test command byte for byte."""
    bash = _blocks(README.read_text(), "bash")
    assert bash[0].strip() == 'pip install ".[cpu]" && darkpose serve'
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    test_command = ci[ci.index("# README's test command, verbatim:") + 1]
    assert bash[1].strip() == test_command


def test_readme_image_is_small_and_credited() -> None:
    m = re.search(r"!\[[^\]]+\]\((docs/assets/[^)]+\.jpg)\)", README.read_text())
    assert m is not None, "expected the example image in README.md"
    assert (REPO / m.group(1)).stat().st_size < 200_000
    assert "CC BY 2.0" in README.read_text()


def test_readme_links_resolve() -> None:
    for target in re.findall(r"\]\(((?:docs/|CHANGELOG|LICENSE)[^)#]*)", README.read_text()):
        assert (REPO / target).exists(), target


# --- examples -----------------------------------------------------------------------------------


def test_docs_python_examples_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Python API page's first example, as written, on ``photo.jpg``."""
    _photo(tmp_path)
    block = _blocks((DOCS / "python-api.md").read_text(), "python")[0]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DARKPOSE_PROVIDERS", "cpu")
    exec(block, {})  # noqa: S102
    assert capsys.readouterr().out.startswith("6 (6, 17, 3)")
    assert (tmp_path / "overlay.png").is_file()


@pytest.mark.parametrize("page", ["README.md", "docs/cli.md"])
def test_infer_examples_run(tmp_path: Path, page: str) -> None:
    """Each ``darkpose infer`` line of the README and the CLI page, as written."""
    _photo(tmp_path)
    text = (REPO / page).read_text()
    lines = [ln for b in _blocks(text, "bash") for ln in b.splitlines()]
    commands = [ln for ln in lines if ln.startswith("darkpose infer ")]
    assert commands, f"expected a darkpose infer example in {page}"
    for line in commands:
        args = line.split("#")[0].split()[1:]
        proc = _cli("--log-level", "WARNING", *args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        out = args[args.index("--out") + 1]
        results = json.loads((tmp_path / out).read_text())
        assert len(results) == 6 and results[0]["file_name"] == "photo.jpg"
        vis = tmp_path / args[args.index("--vis") + 1]
        assert [p.name for p in vis.iterdir()] == ["photo.png"]


@pytest.mark.parametrize("page", ["README.md", "docs/http-api.md"])
def test_curl_examples_run(tmp_path: Path, page: str) -> None:
    """The page's curl block (without its ``darkpose serve`` line) against a real
    ``darkpose serve`` on 127.0.0.1."""
    if shutil.which("curl") is None:
        missing_requirement("curl is not installed")
    _photo(tmp_path)
    block = next(b for b in _blocks((REPO / page).read_text(), "bash") if "curl " in b)
    lines = [ln for ln in block.splitlines() if not ln.startswith("darkpose serve")]
    server = ServerProcess()
    try:
        server.wait_ready()
        script = "\n".join(lines).replace("http://127.0.0.1:8000", server.base)
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.terminate()
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert {"persons", "image", "model", "timings_ms"} <= set(answer)
    person = answer["persons"][0]
    assert 1 <= len(answer["persons"]) <= 6 and len(person["keypoints"]) == 3 * 17
    assert {"bbox", "score"} <= set(person) and "keypoints_flat" not in person
    assert (tmp_path / "overlay.jpg").read_bytes()[:3] == b"\xff\xd8\xff"


# --- hygiene ------------------------------------------------------------------------------------

#: Internal tracker references (the word issue or a hash sign followed by a number) and notes
#: about the load of the machine that measured.
TRACKER_REF = re.compile(r"\bissues? \d+|(?<![\w&/])#\d+\b", re.I)
PROCESS_NOTE = re.compile(r"load average|machine's load|other jobs at load", re.I)


def _python_texts() -> list[Path]:
    return sorted([*(REPO / "tests").rglob("*.py"), *(REPO / "bench").rglob("*.py")])


def test_no_internal_references() -> None:
    pages = [README, REPO / "CHANGELOG.md", *sorted(DOCS.rglob("*.md"))]
    hits = []
    for path in [*pages, *_python_texts()]:
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if TRACKER_REF.search(line):
                hits.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    for path in [README, *sorted(DOCS.rglob("*.md"))]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if PROCESS_NOTE.search(line):
                hits.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not hits, "internal references or process notes:\n" + "\n".join(hits)
