"""`adamba tool`: a tool's result on stdout, --list, and one-line errors (exit 2). Two runs go
through a fresh interpreter as a user's would; the rest call the same entry point in-process
(each fresh `adamba` start pays for importing torch)."""

import json

import pytest

from adamba.cli import main
from adamba.tools import SandboxUnavailable, run_python
from tests.helpers import adamba, assert_clean_error
from tests.tools import no_namespaces


def cli(capsys, *args) -> tuple[int, str, str]:
    """`adamba ARGS` in this process: (exit code, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(result, needle) -> None:
    code, _, err = result
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert needle in lines[0], lines[0]


def sandbox_or_skip() -> None:
    try:
        run_python("pass")
    except SandboxUnavailable as e:
        if not no_namespaces(e):  # a sandbox bug, not a machine without namespaces: fail loudly
            raise
        pytest.skip(f"no sandbox on this machine: {e}")


def test_the_commands_a_user_types():
    res = adamba("tool", "calculator", "(17*23+5)/4")
    assert res.returncode == 0 and res.stdout == "99\n", res.stderr
    try:
        run_python("pass")
    except SandboxUnavailable:
        assert_clean_error(adamba("tool", "python", "print(1+1)"), "never runs code unsandboxed")
        return
    res = adamba("tool", "python", "print(1+1)")
    assert res.returncode == 0 and res.stdout == "2\n", res.stderr


def test_calculator(capsys):
    assert cli(capsys, "tool", "calculator", "--", "-3+4") == (0, "1\n", "")
    assert (
        cli(capsys, "tool", "calculator", "--args", '{"expression": "2**0.5"}')[1] == "1.4142135623730951\n"
    )


def test_python(capsys):
    sandbox_or_skip()
    result = cli(capsys, "tool", "python", "print('partial')\nraise SystemExit('bad input')")
    assert result[1] == "partial\nbad input\n"
    assert_one_line_error(result, "python: exit status 1: bad input")
    assert_one_line_error(
        cli(capsys, "tool", "python", "while True: pass", "--cpu-s", "1"), "CPU time limit of 1 s"
    )


def test_list(capsys):
    code, out, _ = cli(capsys, "tool", "--list")
    assert code == 0 and "calculator(expression: string)" in out and "python(code: string)" in out
    specs = json.loads(cli(capsys, "tool", "--list", "--json")[1])
    assert [s["name"] for s in specs] == ["calculator", "python"]
    assert "isolated sandbox" in cli(capsys, "tool", "--help")[1]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["calculator", "__import__('os').system('true')"], "calculator: attribute access is not allowed"),
        (["calculator", "9**9**9"], "too large"),
        (["calculator"], "calculator needs an argument"),
        (["rm", "/"], "unknown tool 'rm'"),
        ([], "name a tool"),
        (["calculator", "--args", "{bad"], "--args is not valid JSON"),
        (["calculator", "--args", '{"expr": "1"}'], "missing argument 'expression'"),
        (["calculator", "1", "--args", '{"expression": "1"}'], "either as ARG or in --args"),
        (["python", "print(1)", "--memory-mb", "0"], "memory_mb=0 must be > 0"),
    ],
)
def test_errors_are_one_line(capsys, args, needle):
    assert_one_line_error(cli(capsys, "tool", *args), needle)
