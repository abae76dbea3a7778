"""The user's path: every tutorial notebook executes, and the documentation builds with warnings as errors.

These tests need the notebook and documentation tools of the ``test`` extra
(``pip install -e ".[test]"``). When they are missing the tests fail with the install command
rather than skip: a silently skipped docs check is how documentation rots.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# The notebooks live in tutorials/ at the repository root; docs/tutorials links there for Sphinx.
TUTORIALS = ROOT / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))

#: Seconds one notebook cell may run (training cells on a busy 2-core CI machine).
CELL_TIMEOUT = int(os.environ.get("COMTIP_NB_CELL_TIMEOUT", "1800"))
#: The tutorials the documentation promises; each must exist and execute.
EXPECTED = {"quickstart", "her2st", "spatial_downstream", "visium", "cli_gpu"}

_NB_TOOLS = {"nbformat": "nbformat", "nbclient": "nbclient", "ipykernel": "ipykernel"}
_DOC_TOOLS = {
    "sphinx": "sphinx",
    "myst_nb": "myst-nb",
    "sphinx_book_theme": "sphinx-book-theme",
    "sphinx_autodoc_typehints": "sphinx-autodoc-typehints",
    "sphinxarg": "sphinx-argparse",
    "sphinx_copybutton": "sphinx-copybutton",
}


def _require(modules: dict[str, str]) -> None:
    missing = [dist for mod, dist in modules.items() if importlib.util.find_spec(mod) is None]
    if missing:
        pytest.fail(
            f"Missing {', '.join(missing)} (needed to check the docs and tutorials). "
            'Install the test extra: pip install -e ".[test]"',
            pytrace=False,
        )


@pytest.fixture
def python3_kernel(tmp_path, monkeypatch) -> str:
    """A ``python3`` kernelspec that runs *this* interpreter, found first on ``JUPYTER_PATH``.

    So the notebooks see the same environment (and the same comtip_sc) as the test, whatever
    kernels are installed system-wide.
    """
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (ipykernel)",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv(
        "JUPYTER_PATH", os.pathsep.join([str(tmp_path / "jupyter"), os.environ.get("JUPYTER_PATH", "")])
    )
    # The `comtip` command of this environment first on PATH for the notebooks' shell cells.
    monkeypatch.setenv(
        "PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    # The her2st tutorial reads its data folder from COMTIP_HER2ST; the real data lives next to the repository.
    her2st = ROOT.parent / "shared" / "data" / "her2st"
    if "COMTIP_HER2ST" not in os.environ and her2st.is_dir():
        monkeypatch.setenv("COMTIP_HER2ST", str(her2st))
    return "python3"


def test_tutorials_present():
    assert {nb.stem for nb in NOTEBOOKS} >= EXPECTED, (
        f"tutorials in {TUTORIALS}: {[nb.name for nb in NOTEBOOKS]}"
    )


#: A stored inline figure (base64 PNG) and a stored notebook stay small enough to read and review.
MAX_FIGURE_CHARS = 250_000
MAX_NOTEBOOK_BYTES = 2_500_000
#: Output a reader should never see: third-party chatter that the package keeps in its debug log.
NOISE = ("IProgress not found", "GPU available", "TPU available", "💡 Tip", "Loading weights", "LeafSpec")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_notebook_stored_executed(notebook):
    """Tutorials are stored run once, top to bottom, with their (small) figures, so the docs show them."""
    _require({"nbformat": "nbformat"})
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    counts = [cell.get("execution_count") for cell in code]
    assert counts == list(range(1, len(code) + 1)), f"{notebook.name}: run it once in order ({counts})"
    outputs = [out for cell in code for out in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"], f"{notebook.name} stored an error"
    figures = [
        o["data"][kind] for o in outputs for kind in ("image/png", "image/jpeg") if kind in o.get("data", {})
    ]
    assert figures, f"{notebook.name} shows no figure"
    big = [len(f) for f in figures if len(f) > MAX_FIGURE_CHARS]
    assert not big, f"{notebook.name}: figures of {big} characters; draw them at a lower dpi"
    assert notebook.stat().st_size < MAX_NOTEBOOK_BYTES
    text = "".join(
        o.get("text", "") if o.output_type == "stream" else str(o.get("data", {}).get("text/plain", ""))
        for o in outputs
    )
    assert not [n for n in NOISE if n in text], f"{notebook.name}: {[n for n in NOISE if n in text]}"


@pytest.mark.slow
@pytest.mark.timeout(3 * CELL_TIMEOUT)
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_notebook_executes(notebook, python3_kernel):
    _require(_NB_TOOLS)
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name=python3_kernel,
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(notebook.parent)}},  # cwd = the notebook's folder
        allow_errors=False,
    )
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as err:
        pytest.fail(f"{notebook.name} failed:\n{err}", pytrace=False)
    print(f"{notebook.name} executed in {time.perf_counter() - start:.0f} s")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_docs_build(tmp_path):
    _require(_DOC_TOOLS)
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(DOCS),
            str(tmp_path / "html"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    log = proc.stdout[-4000:] + "\n" + proc.stderr[-8000:]
    assert proc.returncode == 0, f"sphinx-build -W --keep-going failed (exit {proc.returncode}):\n{log}"
    assert (tmp_path / "html" / "index.html").is_file()
    for page in ("api", "cli", "installation", "data_layout", "model", *sorted(EXPECTED)):
        found = list((tmp_path / "html").rglob(f"{page}.html"))
        assert found, f"page {page}.html was not built"
    print(f"docs built in {time.perf_counter() - start:.0f} s")


def test_api_page_covers_public_api():
    """Every public function and class of the user-facing modules appears in docs/api.md."""
    import inspect

    import comtip_sc as cs
    import comtip_sc.model

    api = (DOCS / "api.md").read_text()
    missing = []
    for mod in (cs.io, cs.datasets, cs.pp, cs.tl, cs.pl, comtip_sc.model):
        short = mod.__name__.removeprefix("comtip_sc.")
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue  # data such as FLAG_PRESETS is described in prose
            if (
                f"{short}.{name}\n" not in api
                and f"._{obj.__module__.rsplit('._', 1)[-1]}.{name}\n" not in api
            ):
                missing.append(f"{mod.__name__}.{name}")
    assert not missing, f"add these to an autosummary list in docs/api.md: {missing}"
