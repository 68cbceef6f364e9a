"""The notebooks: executed end to end, so they never rot, and their two forms kept in sync.

`notebooks/*.py` (jupytext percent format) is the source reviewed in diffs; the paired
`.ipynb` is generated from it with `jupytext --sync` and stored without outputs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import duckdb
import jupytext
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

from pipeline import cli
from pipeline.config import load_config

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SAMPLE = ROOT / "data" / "sample"
NOTEBOOK = "01-explore-journeys"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
CELL_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def sample_db(tmp_path_factory) -> Path:
    """The demo database: `data/sample` through the whole pipeline."""
    db = tmp_path_factory.mktemp("notebook") / "journeymap.duckdb"
    cli.run_pipeline([SAMPLE], db, load_config(SAMPLE / "journeymap.toml"))
    return db


@pytest.fixture(scope="module")
def executed(sample_db, tmp_path_factory) -> nbformat.NotebookNode:
    """The notebook run top to bottom in a fresh kernel, as Jupyter would, from notebooks/."""
    # A kernelspec of our own that runs this interpreter: a `python3` kernel installed in
    # the user's Jupyter folders could point at another Python without the project.
    kernels = tmp_path_factory.mktemp("kernels")
    (kernels / "python3").mkdir()
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "journeymap test kernel",
        "language": "python",
    }
    (kernels / "python3" / "kernel.json").write_text(json.dumps(spec))
    km = AsyncKernelManager(
        kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)])
    )
    nb = nbformat.read(NOTEBOOKS / f"{NOTEBOOK}.ipynb", as_version=4)
    client = NotebookClient(
        nb,
        km=km,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    # The kernel inherits this process's environment: point the notebook at the fixture.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JOURNEYMAP_DB", str(sample_db))
        client.execute(cleanup_kc=True)
    return nb


def tagged(nb: nbformat.NotebookNode, tag: str) -> nbformat.NotebookNode:
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def output_text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            parts.append(output.data.get("text/plain", ""))
    return "".join(parts)


def test_notebook_runs_without_errors(executed):
    """Every code cell ran, in order, and none raised."""
    code = [c for c in executed.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, "\n".join(f"{o.ename}: {o.evalue}" for o in errors)


@pytest.mark.parametrize("tag", ["sankey", "funnel"])
def test_notebook_draws_the_report_charts(executed, tag):
    """The Sankey and funnel cells each display a Plotly figure of the right kind."""
    figures = [
        o.data[PLOTLY_MIME]
        for o in tagged(executed, tag).outputs
        if o.output_type in ("display_data", "execute_result") and PLOTLY_MIME in o.data
    ]
    assert len(figures) == 1
    trace_type = {"sankey": "sankey", "funnel": "funnel"}[tag]
    assert [t["type"] for t in figures[0]["data"]] == [trace_type]


def test_notebook_lists_the_top_blocker(executed, sample_db):
    """The blockers cell prints the rank-1 blocker of the database it was pointed at."""
    with duckdb.connect(str(sample_db), read_only=True) as con:
        rows = con.sql("select touchpoint, evidence from marts.blockers where rank = 1").fetchall()
    assert rows, "the sample should produce at least one blocker"
    touchpoint, evidence = rows[0]
    text = output_text(tagged(executed, "blockers"))
    assert f"1. {touchpoint}" in text
    assert evidence in text


def test_notebook_shows_transitions_out_of_the_cart(executed):
    """The transition peek shows where sessions go after the cart."""
    text = output_text(tagged(executed, "transitions"))
    assert "to_touchpoint" in text
    assert "checkout_shipping" in text


def test_notebook_forms_are_in_sync():
    """The .ipynb holds the same cells as the .py (run `jupytext --sync` after editing the .py)
    and no outputs."""
    from_py = jupytext.read(NOTEBOOKS / f"{NOTEBOOK}.py")
    from_ipynb = jupytext.read(NOTEBOOKS / f"{NOTEBOOK}.ipynb")

    def cells(nb):
        return [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in nb.cells]

    assert cells(from_ipynb) == cells(from_py), f"run: jupytext --sync notebooks/{NOTEBOOK}.py"
    assert from_ipynb.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    stored = nbformat.read(NOTEBOOKS / f"{NOTEBOOK}.ipynb", as_version=4)
    code = [c for c in stored.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), (
        f"clear the outputs: jupytext --sync notebooks/{NOTEBOOK}.py after clearing them"
    )
