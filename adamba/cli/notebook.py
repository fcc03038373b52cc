"""`adamba notebook`: register the project's Jupyter kernel, then start Jupyter Lab in notebooks/.

The kernel is written inside the project, never into ~/.local: under the running environment's
prefix (`.venv/share/jupyter/kernels/adamba` when adamba runs from the project's .venv, which a
Jupyter started from that .venv finds with no configuration), or, when adamba runs outside a
virtual environment, under `<project>/.jupyter/share/jupyter/kernels/adamba`, which the Lab this
command starts is pointed at through JUPYTER_PATH. The kernel runs this same interpreter, so a
notebook imports exactly the adamba and torch the CLI does.

    adamba notebook                    # register the kernel, start Lab in notebooks/
    adamba notebook --print            # say where the kernel goes and the command, do nothing
    adamba notebook -- --port 8890 --no-browser   # anything after -- goes to jupyter lab
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from adamba.errors import AdambaError

KERNEL_NAME = "adamba"
DISPLAY_NAME = "adamba (.venv)"
PROJECT = Path(__file__).resolve().parents[2]  # the checkout: adamba/cli/notebook.py -> ../..
GET_LAB = (
    "uv run --extra notebook adamba notebook installs it (or: uv pip install 'jupyterlab>=4' 'ipykernel>=6')"
)


def kernel_prefix(project: Path = PROJECT) -> Path:
    """Where the kernel spec goes: this virtual environment's prefix, else a folder in the project."""
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix)
    return project / ".jupyter"


def install_kernel(prefix: Path) -> Path:
    """Write the kernel spec (this interpreter, `-m ipykernel_launcher`) under `prefix`; returns its
    folder, `prefix/share/jupyter/kernels/adamba`."""
    if importlib.util.find_spec("ipykernel") is None:
        raise AdambaError(f"ipykernel is not installed, so no Jupyter kernel can run adamba: {GET_LAB}")
    from ipykernel.kernelspec import install

    return Path(install(kernel_name=KERNEL_NAME, display_name=DISPLAY_NAME, prefix=str(prefix)))


def lab_command(notebooks: Path, extra: list[str], check: bool = True) -> list[str]:
    """The command that starts Jupyter Lab on `notebooks`; `check`: one line saying how to get Lab
    when it is not installed."""
    if check and importlib.util.find_spec("jupyterlab") is None:
        raise AdambaError(f"Jupyter Lab is not installed: {GET_LAB}")
    return [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={notebooks}", *extra]


def lab_env(prefix: Path) -> dict[str, str]:
    """The environment for Lab: JUPYTER_PATH led by the kernel's folder, so Lab lists it."""
    env = dict(os.environ)
    share = str(prefix / "share" / "jupyter")
    env["JUPYTER_PATH"] = os.pathsep.join(p for p in (share, env.get("JUPYTER_PATH", "")) if p)
    return env


def run(args: argparse.Namespace) -> None:
    notebooks = Path(args.dir).resolve()
    if not notebooks.is_dir():
        raise AdambaError(f"--dir {args.dir} is not a folder: give the folder that holds the notebooks")
    extra = [a for a in args.lab_args if a != "--"]
    prefix = kernel_prefix()
    cmd = lab_command(notebooks, extra, check=not args.print)
    if args.print:
        print(f"kernel: {prefix / 'share' / 'jupyter' / 'kernels' / KERNEL_NAME} (runs {sys.executable})")
        print("lab: " + " ".join(cmd))
        return
    where = install_kernel(prefix)
    print(f"adamba: kernel '{DISPLAY_NAME}' registered in {where}", file=sys.stderr)
    rc = subprocess.call(cmd, env=lab_env(prefix))
    if rc:
        sys.exit(rc)


def register(sub) -> None:
    n = sub.add_parser(
        "notebook",
        help="register the project's Jupyter kernel and start Jupyter Lab in notebooks/",
        description="Register the project's Jupyter kernel (inside the project: the .venv's prefix) and "
        "start Jupyter Lab in notebooks/. Needs the notebook extra: " + GET_LAB + ". As root (a "
        "container), Jupyter wants: adamba notebook -- --allow-root",
    )
    n.add_argument(
        "--dir", default=str(PROJECT / "notebooks"), help="the folder Lab opens (default: notebooks/)"
    )
    n.add_argument(
        "--print", action="store_true", help="print where the kernel goes and the Lab command; do nothing"
    )
    n.add_argument("lab_args", nargs=argparse.REMAINDER, help="after --: arguments for jupyter lab")
    n.set_defaults(func=run)
