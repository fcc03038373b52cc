"""`adamba tool`: run a tool from the shell as a model would call it, and print its result."""

from __future__ import annotations

import argparse
import json
import sys

from adamba.errors import AdambaError


def run(args: argparse.Namespace) -> None:
    from adamba.tools import SandboxLimits, default_registry

    limits = SandboxLimits(
        cpu_s=args.cpu_s, wall_s=args.wall_s, memory_mb=args.memory_mb, output_bytes=args.output_bytes
    )
    tools = default_registry(limits)
    if args.list:
        if args.json:
            print(json.dumps(tools.specs(), indent=2, ensure_ascii=False))
            return
        for t in tools:
            print(t.signature())
            print(f"    {t.description}")
        return
    if args.name is None:
        raise AdambaError(f"name a tool ({', '.join(tools.names())}) or use --list")
    if args.name not in tools:
        raise AdambaError(f"unknown tool {args.name!r}; tools: {', '.join(tools.names())}")
    tool = tools.get(args.name)
    if args.args is not None:
        if args.arg is not None:
            raise AdambaError("give the argument either as ARG or in --args, not both")
        try:
            arguments = json.loads(args.args)
        except ValueError as e:
            raise AdambaError(f"--args is not valid JSON: {e}") from None
    elif args.arg is not None:
        value = sys.stdin.read() if args.arg == "-" else args.arg
        arguments = {tool.main_parameter(): value}
    else:
        raise AdambaError(
            f"{args.name} needs an argument: {tool.signature()} (ARG, '-' for stdin, or --args JSON)"
        )
    res = tools.call(args.name, arguments)
    if res.content:
        sys.stdout.write(res.content if res.content.endswith("\n") else res.content + "\n")
        sys.stdout.flush()
    if res.error is not None:
        raise AdambaError(res.error.replace("\n", " "))


def register(sub) -> None:
    t = sub.add_parser(
        "tool",
        help="run a tool (calculator, python) in its sandbox and print the result",
        description="Run one of the tools a model can call, as it would call it, and print the result. "
        "calculator evaluates arithmetic by parsing it (never eval): exact integers and fractions, "
        "+ - * / // % ** ^, sqrt, log, sin... python runs a program in an OS-isolated sandbox (new "
        "network, PID, mount, IPC and UTS namespaces, a private read-only root with a throwaway "
        "tmpfs working directory, a throwaway uid, rlimits) and prints what it printed; it refuses "
        "to run where that isolation is unavailable. A failed call (a refused expression, code "
        "that raises or hits a limit) prints its output, then one error line, and exits 2.",
        epilog='examples:  adamba tool calculator "(17*23+5)/4"   |   adamba tool python "print(1+1)"   |   '
        "adamba tool python - < script.py   |   adamba tool --list.   An expression that starts with '-' "
        'goes after --:  adamba tool calculator -- "-3+4"',
    )
    t.add_argument("name", nargs="?", help="the tool: calculator or python")
    t.add_argument("arg", nargs="?", help="its main argument (the expression, the code); '-' reads stdin")
    t.add_argument("--args", help='all arguments as a JSON object, e.g. \'{"expression": "2**10"}\'')
    t.add_argument("--list", action="store_true", help="list the tools with their signatures")
    t.add_argument("--json", action="store_true", help="with --list: the JSON specs a system prompt offers")
    t.add_argument("--cpu-s", type=int, default=5, help="python: CPU seconds per process (default 5)")
    t.add_argument("--wall-s", type=float, default=10.0, help="python: wall-clock seconds (default 10)")
    t.add_argument(
        "--memory-mb", type=int, default=1024, help="python: address space per process (default 1024)"
    )
    t.add_argument("--output-bytes", type=int, default=16384, help="python: output kept before it is cut")
    t.set_defaults(func=run)
