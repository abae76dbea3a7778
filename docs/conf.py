# Configuration file for the Sphinx documentation builder (cookiecutter-scverse layout).
#
# Build: sphinx-build -W --keep-going -b html docs docs/_build/html
#
# Offline by design: no intersphinx (the build machines have no internet), notebooks are rendered
# but not executed here (tests/test_docs.py executes them), and the CLI reference is generated
# from comtip_sc.cli.build_parser by sphinx-argparse.
from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Iterable, Iterator
from datetime import datetime
from importlib.metadata import PackageNotFoundError, metadata
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
# Document the source tree even when the package is not installed (it normally is: pip install -e ".[doc]").
sys.path.insert(0, str(ROOT / "src"))

# -- Project information -----------------------------------------------------------------------

try:
    info = metadata("comtip_sc")
    project = info["Name"]
    author = info.get("Author") or (info.get("Author-email") or "comtip_sc developers").split("<")[0].strip()
    release = info["Version"]
except PackageNotFoundError:  # pragma: no cover - building from a bare source tree
    project, author, release = "comtip_sc", "comtip_sc developers", "0.0.0"
author = author or "comtip_sc developers"
version = release
copyright = f"{datetime.now():%Y}, {author}"

# autosummary writes one page per object into generated/ (git-ignored). Start from an empty folder so
# that pages of objects no longer listed in api.md do not linger and warn.
shutil.rmtree(HERE / "generated", ignore_errors=True)

templates_path = ["_templates"]
needs_sphinx = "7.0"
# Every cross-reference into comtip_sc must resolve; third-party targets cannot (no intersphinx offline)
# and are ignored below, narrowly, by package.
nitpicky = True

# -- General configuration ---------------------------------------------------------------------

extensions = [
    "myst_nb",
    "sphinx_copybutton",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx_autodoc_typehints",  # after napoleon
    "sphinx.ext.mathjax",
    "sphinxarg.ext",
]

autosummary_generate = True
autosummary_imported_members = False
autodoc_member_order = "groupwise"
autodoc_default_options = {"show-inheritance": False}
# Methods a class inherits from Lightning keep Lightning's docstrings there; copied here they carry roles and
# references of Lightning's own documentation.
autodoc_inherit_docstrings = False
default_role = "literal"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_include_init_with_doc = False
napoleon_use_rtype = True  # with the free-text Returns handling in setup() below
napoleon_use_param = True
napoleon_use_ivar = True  # "Attributes" sections as fields: no duplicates of autosummary's attributes
typehints_defaults = "braces"
typehints_use_signature = False
always_use_bars_union = True

myst_heading_anchors = 6
myst_enable_extensions = [
    "amsmath",
    "colon_fence",
    "deflist",
    "dollarmath",
    "html_image",
    "html_admonition",
]
myst_url_schemes = ("http", "https", "mailto")

# Notebooks are stored without outputs and rendered as they are; tests/test_docs.py executes them.
nb_execution_mode = "off"
nb_output_stderr = "remove"
nb_merge_streams = True

source_suffix = {
    ".rst": "restructuredtext",
    ".md": "myst-nb",
    ".ipynb": "myst-nb",
}

# No intersphinx: the documentation must build offline.
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "**/_build"]

# -- HTML output -------------------------------------------------------------------------------

html_theme = "sphinx_book_theme"
html_title = project
html_theme_options = {
    "path_to_docs": "docs/",
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
pygments_style = "default"

# -- Unresolvable third-party references -------------------------------------------------------
# Without intersphinx, every type from these packages is an unresolved reference under nitpicky. Only
# fully qualified targets *inside* these packages are ignored: a broken reference into
# comtip_sc still fails the build.
_THIRD_PARTY = (
    "anndata",
    "collections",
    "dask",
    "geopandas",
    "lightning",
    "matplotlib",
    "numpy",
    "os",
    "pandas",
    "pathlib",
    "safetensors",
    "scanpy",
    "scipy",
    "sklearn",
    "spatialdata",
    "timm",
    "torch",
    "typing",
    "xarray",
    "zarr",
)
nitpick_ignore_regex = [
    (r"py:(class|func|meth|attr|data|obj|mod|exc)", rf"({'|'.join(_THIRD_PARTY)})(\..+)?"),
]

# Exact targets that are private on purpose: the shared base class of the cache readers shows up as
# their base in the API pages but is not part of the API.
nitpick_ignore: list[tuple[str, str]] = [
    ("py:class", "comtip_sc.pp._tile_cache.LazyZarrArray"),
    # Records that the package passes between its own functions and that users never build.
    ("py:class", "comtip_sc._sections.Section"),
    ("py:class", "comtip_sc.train._registration.Registered"),
]


# -- Free-text "Returns" sections --------------------------------------------------------------
# scverse docstrings write prose under "Returns" ("``None``, or the new SpatialData when ...").
# Napoleon would read the first line as a type; this keeps the whole section as the description
# (the same fix as cookiecutter-scverse's docs/extensions/typed_returns.py).
def _process_return(lines: Iterable[str]) -> Iterator[str]:
    for line in lines:
        if m := re.fullmatch(r"(?P<param>\w+)\s+:\s+(?P<type>[\w.]+)", line):
            yield f"-{m['param']} (:class:`~{m['type']}`)"
        else:
            yield line


def _parse_returns_section(self, section: str) -> list[str]:
    lines_raw = self._dedent(self._consume_to_next_section())
    if lines_raw and lines_raw[0] == ":":
        del lines_raw[0]
    lines = self._format_block(":returns: ", list(_process_return(lines_raw)))
    if lines and lines[-1]:
        lines.append("")
    return lines


def setup(app):
    from sphinx.ext.napoleon import NumpyDocstring

    NumpyDocstring._parse_returns_section = _parse_returns_section
