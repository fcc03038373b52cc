"""`adamba notebook`: the kernel registration and the Lab command, without starting a server."""

from __future__ import annotations

import json
import sys

import pytest

from adamba.cli import main
from adamba.cli import notebook as nbcli
from adamba.errors import AdambaError


def test_print_names_kernel_and_lab_command(capsys, tmp_path):
    main(["notebook", "--print", "--dir", str(tmp_path), "--", "--port", "8890", "--no-browser"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"kernel: {nbcli.kernel_prefix()}/share/jupyter/kernels/adamba")
    assert (
        out[1]
        == f"lab: {sys.executable} -m jupyterlab --ServerApp.root_dir={tmp_path} --port 8890 --no-browser"
    )


def test_kernel_stays_in_the_project(monkeypatch, tmp_path):
    """Inside a virtual environment: its prefix (the project's .venv); outside: a project folder."""
    monkeypatch.setattr(sys, "prefix", "/somewhere/.venv")
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    assert str(nbcli.kernel_prefix(tmp_path)) == "/somewhere/.venv"
    monkeypatch.setattr(sys, "prefix", "/usr")
    assert nbcli.kernel_prefix(tmp_path) == tmp_path / ".jupyter"


def test_install_kernel_runs_this_interpreter(tmp_path):
    pytest.importorskip("ipykernel")
    where = nbcli.install_kernel(tmp_path)
    assert where == tmp_path / "share" / "jupyter" / "kernels" / "adamba"
    spec = json.loads((where / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable and "ipykernel_launcher" in spec["argv"]
    assert spec["display_name"] == nbcli.DISPLAY_NAME
    env = nbcli.lab_env(tmp_path)
    assert env["JUPYTER_PATH"].split(":")[0] == str(tmp_path / "share" / "jupyter")


def test_missing_lab_or_kernel_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setattr(nbcli.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        AdambaError,
        match=r"Jupyter Lab is not installed: uv run --extra notebook adamba notebook installs it",
    ):
        nbcli.lab_command(tmp_path, [])
    with pytest.raises(AdambaError, match=r"ipykernel is not installed.*uv run --extra notebook"):
        nbcli.install_kernel(tmp_path)


def test_bad_dir_is_one_line(tmp_path):
    from tests.helpers import adamba, assert_clean_error

    assert_clean_error(adamba("notebook", "--dir", str(tmp_path / "nope")), "--dir", "is not a folder")
