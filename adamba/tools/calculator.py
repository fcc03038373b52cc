"""The calculator tool: arithmetic from a model, evaluated by walking its syntax tree, never `eval`.

`evaluate("(17*23+5)/4")` -> "99". The expression is parsed with `ast` and only numeric literals,
+ - * / // % ** (and ^ as a power, as calculators write it), unary signs, parentheses, the
constants pi, e, tau and the functions in FUNCTIONS are walked; anything else (names, attribute
access, strings, calls to other functions, comprehensions...) is refused before anything runs,
so `__import__('os')` is a refusal, not an import.

Exact where it can be: numbers are Fractions (0.1 + 0.2 is 0.3; 1/3*3 is 1), so integers stay
exact however large; results print as integers, as finite decimals when they are, and otherwise
rounded to 17 significant digits. Functions such as sqrt or sin make a result inexact (a float),
except sqrt of an exact square.

Bounds against abuse, each refused with a CalculatorError saying which: the expression's length,
its nesting, and the size of every intermediate number (MAX_DIGITS digits in numerator or
denominator), checked *before* a power is computed, so 9**9**9 is refused at once instead of
running for hours.
"""

from __future__ import annotations

import ast
import math
import operator
from decimal import Context, Decimal
from fractions import Fraction

MAX_LENGTH = 1000  # characters of expression
MAX_DIGITS = 1000  # digits of any number met on the way (numerator or denominator)
MAX_BITS = int(MAX_DIGITS * math.log2(10)) + 1
MAX_DEPTH = 600  # nesting of the syntax tree (1+1+...+1 nests once per +)

Number = Fraction | float


class CalculatorError(ValueError):
    """An expression the calculator refuses or cannot compute; the message says why."""


def _sqrt(x: Number) -> Number:
    if isinstance(x, Fraction) and x >= 0:
        n, d = math.isqrt(x.numerator), math.isqrt(x.denominator)
        if n * n == x.numerator and d * d == x.denominator:
            return Fraction(n, d)
    return math.sqrt(x)


def _round(x: Number, nd: Number = 0) -> Number:
    if not _is_int(nd):
        raise CalculatorError("round(x, n) takes a whole number of digits n")
    r = round(x, int(nd))
    return Fraction(r) if isinstance(x, Fraction) else r


def _factorial(x: Number) -> Number:
    if not _is_int(x) or x < 0:
        raise CalculatorError("factorial takes a whole number >= 0")
    if x > 450:
        raise CalculatorError(f"factorial({int(x)}) is over the {MAX_DIGITS}-digit limit")
    return Fraction(math.factorial(int(x)))


def _int_fn(fn):
    def f(*xs: Number) -> Number:
        if not all(_is_int(x) for x in xs):
            raise CalculatorError(f"{fn.__name__} takes whole numbers")
        return Fraction(fn(*(int(x) for x in xs)))

    return f


def _log(x: Number, base: Number | None = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


FUNCTIONS = {
    "abs": abs,
    "round": _round,
    "min": min,
    "max": max,
    "sqrt": _sqrt,
    "exp": math.exp,
    "log": _log,
    "ln": math.log,
    "log2": math.log2,
    "log10": math.log10,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "asin": math.asin,
    "acos": math.acos,
    "atan": math.atan,
    "floor": lambda x: Fraction(math.floor(x)),
    "ceil": lambda x: Fraction(math.ceil(x)),
    "factorial": _factorial,
    "gcd": _int_fn(math.gcd),
    "lcm": _int_fn(math.lcm),
}
CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}
OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
SYMBOLS = {
    ast.BitXor: "^",
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.MatMult: "@",
}


def _is_int(x: Number) -> bool:
    return isinstance(x, Fraction) and x.denominator == 1


def _checked(x: Number) -> Number:
    if isinstance(x, float):
        if not math.isfinite(x):
            raise CalculatorError("the result is too large (or not a number)")
    elif max(x.numerator.bit_length(), x.denominator.bit_length()) > MAX_BITS:
        raise CalculatorError(f"a number on the way has over {MAX_DIGITS} digits")
    return x


def _power(base: Number, exp: Number) -> Number:
    if _is_int(exp) and isinstance(base, Fraction):
        n = abs(int(exp))
        size = max(base.numerator.bit_length(), base.denominator.bit_length())
        if abs(base) not in (0, 1) and (size - 1) * n > MAX_BITS:  # (size-1)*n bits at least
            raise CalculatorError(f"the power has over {MAX_DIGITS} digits: exponent {n} is too large")
        if base == 0 and exp < 0:
            raise CalculatorError("division by zero (0 to a negative power)")
        return base**exp
    if base < 0 and not float(exp).is_integer():
        raise CalculatorError("a negative number to a fractional power is not a real number")
    try:
        return float(base) ** float(exp)
    except OverflowError:
        raise CalculatorError("the result is too large") from None
    except ZeroDivisionError:
        raise CalculatorError("division by zero (0 to a negative power)") from None


class _Evaluator:
    def eval(self, node: ast.AST, depth: int = 0) -> Number:
        if depth > MAX_DEPTH:
            raise CalculatorError(f"the expression is nested over {MAX_DEPTH} deep")
        if isinstance(node, ast.Expression):
            return self.eval(node.body, depth + 1)
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise CalculatorError(f"only numbers are allowed, not {v!r}"[:120])
            if isinstance(v, float) and not math.isfinite(v):
                raise CalculatorError("a number in the expression is too large")
            return _checked(Fraction(v) if isinstance(v, int) else Fraction(repr(v)))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
            x = self.eval(node.operand, depth + 1)
            return -x if isinstance(node.op, ast.USub) else x
        if isinstance(node, ast.BinOp):
            a, b = self.eval(node.left, depth + 1), self.eval(node.right, depth + 1)
            if isinstance(node.op, ast.Pow):
                return _checked(_power(a, b))
            op = OPERATORS.get(type(node.op))
            if op is None:
                raise CalculatorError(
                    f"operator {SYMBOLS.get(type(node.op), type(node.op).__name__)} is not supported"
                )
            if isinstance(a, float) or isinstance(b, float):
                a, b = float(a), float(b)
            try:
                return _checked(op(a, b))
            except ZeroDivisionError:
                raise CalculatorError("division by zero") from None
        if isinstance(node, ast.Name):
            if node.id in CONSTANTS:
                return CONSTANTS[node.id]
            raise CalculatorError(f"unknown name '{node.id}'" + self._hint())
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name):  # f(x)(y), obj.method(...)
                raise CalculatorError(f"{_describe(node.func)} is not allowed in a calculator expression")
            name = node.func.id
            if name not in FUNCTIONS:
                raise CalculatorError(f"unknown function '{name}'" + self._hint())
            if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
                raise CalculatorError(f"{name}() takes plain positional arguments")
            args = [self.eval(a, depth + 1) for a in node.args]
            try:
                return _checked(_as_number(FUNCTIONS[name](*args)))
            except (TypeError, ValueError) as e:
                if isinstance(e, CalculatorError):
                    raise
                raise CalculatorError(f"{name}: {e}") from None
            except OverflowError:
                raise CalculatorError(f"{name}: the result is too large") from None
            except ZeroDivisionError:
                raise CalculatorError(f"{name}: division by zero") from None
        raise CalculatorError(f"{_describe(node)} is not allowed in a calculator expression")

    @staticmethod
    def _hint() -> str:
        return f" (functions: {', '.join(FUNCTIONS)}; constants: {', '.join(CONSTANTS)})"


def _as_number(x) -> Number:
    if isinstance(x, Fraction) or isinstance(x, float):
        return x
    if isinstance(x, int):
        return Fraction(x)
    raise CalculatorError(f"unexpected value {x!r}")


def _describe(node: ast.AST) -> str:
    names = {
        ast.Attribute: "attribute access",
        ast.Subscript: "indexing",
        ast.Compare: "a comparison",
        ast.BoolOp: "and/or",
        ast.Lambda: "lambda",
        ast.Tuple: "a tuple (a comma?)",
        ast.List: "a list",
        ast.Dict: "a dict",
        ast.Set: "a set",
        ast.JoinedStr: "an f-string",
        ast.IfExp: "if/else",
        ast.NamedExpr: ":=",
    }
    for t, name in names.items():
        if isinstance(node, t):
            return name
    if isinstance(node, ast.UnaryOp):
        return f"unary {type(node.op).__name__}"
    return type(node).__name__


def evaluate_number(expression: str) -> Number:
    """The value of `expression`: a Fraction when exact, a float otherwise. Raises CalculatorError."""
    if not isinstance(expression, str):
        raise CalculatorError("the expression must be a string")
    if len(expression) > MAX_LENGTH:
        raise CalculatorError(f"the expression has {len(expression)} characters, over the {MAX_LENGTH} limit")
    source = expression.strip().replace("^", "**")
    if not source:
        raise CalculatorError("the expression is empty")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as e:
        raise CalculatorError(f"not an arithmetic expression: {e.msg}") from None
    except (RecursionError, MemoryError, ValueError):
        raise CalculatorError("the expression is too deeply nested") from None
    try:
        return _Evaluator().eval(tree)
    except RecursionError:
        raise CalculatorError("the expression is too deeply nested") from None


def format_number(x: Number) -> str:
    """Integers exactly, terminating fractions as exact decimals, the rest to 17 significant digits."""
    if isinstance(x, float):
        if x.is_integer() and abs(x) < 1e16:
            return str(int(x))
        return repr(x)
    if x.denominator == 1:
        return str(x.numerator)
    d = x.denominator
    twos, fives = _multiplicity(d, 2), _multiplicity(d, 5)
    if d == 2**twos * 5**fives and max(twos, fives) <= 40:  # a finite decimal, short enough
        places = max(twos, fives)
        digits = str(abs(x.numerator) * 10**places // d).rjust(places + 1, "0")
        sign = "-" if x < 0 else ""
        return f"{sign}{digits[:-places]}.{digits[-places:]}"
    if abs(x) < 1e300 and abs(x) > 1e-300:
        return repr(x.numerator / x.denominator)
    q = Context(prec=17).divide(Decimal(x.numerator), Decimal(x.denominator))
    return f"{q:E}".replace("E", "e")


def _multiplicity(n: int, p: int) -> int:
    k = 0
    while n % p == 0:
        n //= p
        k += 1
    return k


def evaluate(expression: str) -> str:
    """The result of `expression` as text ("99", "0.3", "1.4142135623730951"). Raises CalculatorError."""
    return format_number(evaluate_number(expression))
