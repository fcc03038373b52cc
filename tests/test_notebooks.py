"""notebooks/: committed without outputs, and every one runs top to bottom in a fresh kernel.

Each notebook executes in its own temp folder (all its writes land there) on the kernel that
`adamba notebook` registers, installed into a temp prefix; a failing cell fails the test. Each
must end with a picture and a printed number.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
EXPECTED = ["00_env_smoke", "10_data_prep", "20_route_a_train", "30_route_b_train"]
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))


def test_the_four_notebooks_are_there():
    assert [p.stem for p in PATHS] == EXPECTED


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    """The nbstripout rule: outputs are made by running, never committed."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs: clear them before committing"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
    assert nb.metadata.kernelspec.name == "adamba", "notebooks open on the project's kernel"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """The project's kernel spec (this interpreter), registered the way `adamba notebook` does."""
    from adamba.cli.notebook import KERNEL_NAME, install_kernel, lab_env

    prefix = tmp_path_factory.mktemp("kernel")
    install_kernel(prefix)
    mp = pytest.MonkeyPatch()
    mp.setenv("JUPYTER_PATH", lab_env(prefix)["JUPYTER_PATH"])
    mp.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    yield KERNEL_NAME
    mp.undo()


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_runs_top_to_bottom(path, kernel, tmp_path):
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    before = sorted(NOTEBOOKS.iterdir())
    NotebookClient(
        nb, timeout=300, kernel_name=kernel, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    assert sorted(NOTEBOOKS.iterdir()) == before, "a notebook wrote outside its working directory"
    assert any(tmp_path.iterdir()) or path.stem == "00_env_smoke", "it ran somewhere else"
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    assert any("image/png" in o.get("data", {}) for o in last.outputs), f"{path.name} ends without a picture"
    printed = "".join(o.get("text", "") for o in last.outputs if o.output_type == "stream")
    assert re.search(r"\d", printed), f"{path.name} ends without a printed number"
