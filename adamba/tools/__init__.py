"""Tools a model can call, and the built-in ones: `calculator` (arithmetic by parsing, never
`eval`) and `python` (code run in an OS-isolated sandbox: namespaces, a private read-only root,
rlimits; see sandbox.py and jail.py).

    from adamba.tools import default_registry
    tools = default_registry()
    tools.specs()                                   # for the system turn
    tools.dispatch({"name": "calculator", "arguments": {"expression": "(17*23+5)/4"}}).text()  # '99'
"""

from __future__ import annotations

from adamba.tools.calculator import CalculatorError, evaluate
from adamba.tools.registry import Tool, ToolRegistry, ToolResult, check_arguments
from adamba.tools.sandbox import SandboxLimits, SandboxRun, SandboxUnavailable, run_python

__all__ = [
    "CalculatorError",
    "SandboxLimits",
    "SandboxRun",
    "SandboxUnavailable",
    "Tool",
    "ToolRegistry",
    "ToolResult",
    "calculator_tool",
    "check_arguments",
    "default_registry",
    "evaluate",
    "python_tool",
    "run_python",
]


def calculator_tool() -> Tool:
    def calculate(expression: str) -> ToolResult:
        try:
            return ToolResult(evaluate(expression))
        except CalculatorError as e:
            return ToolResult(error=f"calculator: {e}")

    return Tool(
        "calculator",
        "Evaluate an arithmetic expression exactly: numbers, + - * / // % ** (or ^), parentheses, "
        "pi, e, and sqrt, exp, log, sin, cos, tan, floor, ceil, round, abs, min, max, factorial, gcd.",
        {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "e.g. (17*23+5)/4"}},
            "required": ["expression"],
            "additionalProperties": False,
        },
        calculate,
    )


def python_tool(limits: SandboxLimits | None = None) -> Tool:
    limits = (limits or SandboxLimits()).check()

    def run(code: str) -> ToolResult:
        size = len(code.encode("utf-8", "surrogatepass"))
        if size > limits.code_bytes:
            return ToolResult(
                error=f"python: code of {size} bytes is over the {limits.code_bytes} byte limit"
            )
        res = run_python(code, limits)  # SandboxUnavailable (no isolation here) is not the model's doing
        err = res.error()
        return ToolResult(res.output, None if err is None else f"python: {err}")

    return Tool(
        "python",
        f"Run a Python program and return what it prints (stdout and stderr). No network, no files "
        f"kept between calls; limits: {limits.cpu_s} s CPU, {limits.wall_s:g} s wall clock, "
        f"{limits.memory_mb} MiB memory, {limits.output_bytes} bytes of output.",
        {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "the program; print the result"}},
            "required": ["code"],
            "additionalProperties": False,
        },
        run,
    )


def default_registry(limits: SandboxLimits | None = None) -> ToolRegistry:
    """The built-in tools: calculator and python (with `limits` for its sandbox)."""
    return ToolRegistry([calculator_tool(), python_tool(limits)])
