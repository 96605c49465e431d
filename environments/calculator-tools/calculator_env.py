"""Calculator tools: multi-step word problems, solved with a calculator the model calls as a tool.

The model calls the tool by writing, anywhere in its message::

    <tool>{"name": "calculator", "arguments": {"expression": "12*(3+4)"}}</tool>

The environment evaluates each call (at most four per message) and answers with one ``tool``
message per call, holding the result or ``error: ...``. The episode ends on a message with a final
answer, ``<answer>NUMBER</answer>``. Expressions are evaluated by walking their syntax tree: numbers,
``+ - * / // % **``, parentheses and a few named functions; names are looked up in a fixed table,
never evaluated, and sizes and exponents are bounded.

Problems are generated from a seed by templates; each belongs to train or test by a hash of its text.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import operator
import re

import numpy as np

from envhub import ChatEnv, Reply, Rubric, Score, criterion, system, tool, user
from envhub.errors import TaskNotFoundError

TEST_FRACTION = 0.2
MAX_CALLS_PER_TURN = 4
EFFICIENT_TURNS = 3  # one or two calculator turns and the answer

SYSTEM_PROMPT = (
    "Solve the word problem. You have a calculator tool. To use it, write a call like\n"
    '<tool>{"name": "calculator", "arguments": {"expression": "12*(3+4)"}}</tool>\n'
    "and stop; the result comes back in a tool message. Expressions may use numbers, + - * / // % ** "
    "parentheses and sqrt, abs, round, min, max. When you know the result, give it as a number in "
    "answer tags, e.g. <answer>84</answer>; that ends the conversation."
)
TOOL_TAG = re.compile(r"<tool>(.*?)</tool>", re.S)
ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S)
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


# --- the calculator ------------------------------------------------------------------------------

class CalcError(ValueError):
    """An expression the calculator refuses or cannot evaluate; the message goes back to the model."""


BINARY = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _round(value, digits=0):
    if not isinstance(digits, int) or abs(digits) > 15:
        raise ValueError("digits must be a whole number from -15 to 15")
    return round(value, digits)


FUNCTIONS = {"sqrt": math.sqrt, "abs": abs, "round": _round, "min": min, "max": max}
MAX_EXPRESSION_CHARS = 300
MAX_NODES = 100
MAX_INT_BITS = 256
MAX_EXPONENT = 64


def calculate(expression: str) -> int | float:
    """Evaluate an arithmetic expression safely; :class:`CalcError` says what is wrong."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalcError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise CalcError("not a valid expression") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise CalcError(f"expression has more than {MAX_NODES} parts")
    return _checked(_eval(tree.body))


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        return _checked(UNARY[type(node.op)](_eval(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > MAX_EXPONENT or abs(left) > 2**MAX_INT_BITS):
            raise CalcError(f"exponent or base too large (exponents up to {MAX_EXPONENT})")
        try:
            return _checked(BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise CalcError("division by zero") from None
        except OverflowError:
            raise CalcError("result too large") from None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        fn = FUNCTIONS.get(node.func.id)
        if fn is None:
            raise CalcError(f"unknown function {node.func.id!r} (use {', '.join(FUNCTIONS)})")
        try:
            return _checked(fn(*[_eval(arg) for arg in node.args]))
        except (TypeError, ValueError) as exc:
            raise CalcError(f"{node.func.id}: {exc}") from None
    raise CalcError(f"{type(node).__name__} is not allowed; use numbers, operators and {', '.join(FUNCTIONS)}")


def _checked(value):
    if isinstance(value, complex):
        raise CalcError("complex result")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise CalcError("result too large")
    if isinstance(value, float) and (not math.isfinite(value) or abs(value) > 1e300):
        raise CalcError("result too large or not a number")
    return value


def format_number(value: int | float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return f"{value:.12g}" if isinstance(value, float) else str(value)


def run_call(text: str) -> tuple[bool, str]:
    """Run one tool call's JSON; returns (valid, what the tool message says)."""
    try:
        call = json.loads(text)
    except json.JSONDecodeError as exc:
        return False, f"error: the call is not valid JSON ({exc.msg})"
    if not isinstance(call, dict) or call.get("name") != "calculator":
        return False, 'error: the only tool is {"name": "calculator", ...}'
    args = call.get("arguments")
    if not isinstance(args, dict) or not isinstance(args.get("expression"), str):
        return False, 'error: arguments must be {"expression": "<arithmetic>"}'
    try:
        return True, format_number(calculate(args["expression"]))
    except CalcError as exc:
        return False, f"error: {exc}"


# --- the problems --------------------------------------------------------------------------------

def _warehouse(r):
    a, b, c, d = r(12, 48), r(6, 24), r(12, 36), r(10, 300)
    text = (f"A warehouse receives {a} crates. Each crate holds {b} boxes, and each box holds {c} light bulbs. "
            f"{d} bulbs arrive broken. How many unbroken bulbs are there?")
    return text, f"{a}*{b}*{c} - {d}"


def _trip(r):
    v1, t1, v2, t2, back = r(45, 120), r(2, 9), r(45, 120), r(2, 9), r(20, 150)
    text = (f"A truck drives {t1} hours at {v1} km/h, then {t2} hours at {v2} km/h, and then drives {back} km "
            f"back the way it came. How far in km is it from where it started?")
    return text, f"{v1}*{t1} + {v2}*{t2} - {back}"


def _savings(r):
    a, b, d = r(35, 95), r(12, 52), r(3, 8)
    total = a * b
    c = r(total // 5, total // 2)
    c += (total - c) % d  # make the split exact
    text = (f"Maya saves ${a} every week for {b} weeks. She spends ${c} on a bike and shares the rest equally "
            f"among her {d} cousins. How many dollars does each cousin get?")
    return text, f"({a}*{b} - {c}) / {d}"


def _fence(r):
    length, width, gate, price = r(40, 300), r(25, 200), r(2, 6), r(7, 35)
    text = (f"A field is a rectangle {length} m long and {width} m wide. A fence goes all around it except "
            f"for a {gate} m gate. Fencing costs ${price} per metre. What does the fence cost in dollars?")
    return text, f"(2*({length} + {width}) - {gate}) * {price}"


def _factory(r):
    rate, hours, days, failed = 20 * r(1, 10), r(6, 16), r(5, 30), 5 * r(1, 6)
    text = (f"A machine makes {rate} parts an hour, {hours} hours a day, for {days} days. {failed}% of the parts "
            f"fail inspection. How many parts pass?")
    return text, f"{rate}*{hours}*{days} * (100 - {failed}) / 100"


TEMPLATES = [_warehouse, _trip, _savings, _fence, _factory]


def split_of(text: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") / 2**32
    return "test" if bucket < TEST_FRACTION else "train"


def generate(seed: int) -> dict:
    """The problem drawn from ``seed``: its text, a one-line calculation and the integer answer."""
    rng = np.random.default_rng(seed)
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    text, expression = template(lambda low, high: int(rng.integers(low, high + 1)))
    value = calculate(expression)
    assert float(value).is_integer(), (seed, expression)
    return {"id": f"calc-{seed}", "question": text, "expression": expression, "answer": int(value)}


# --- the rubric ----------------------------------------------------------------------------------

def final_answer(episode) -> str | None:
    tags = ANSWER_TAG.findall(episode.completion)
    return tags[-1] if tags else None


@criterion(weight=0.7)
def correct(episode) -> Score:
    """The final answer holds exactly one number, equal to the result."""
    answer = final_answer(episode)
    if answer is None:
        return Score(0.0, "no final <answer>")
    numbers = NUMBER.findall(answer.replace(",", ""))
    if len(numbers) != 1:
        return Score(0.0, f"the answer holds {len(numbers)} numbers, expected one")
    ok = abs(float(numbers[0]) - episode.task["answer"]) < 1e-6
    return Score(float(ok), f"answered {numbers[0]}, expected {episode.task['answer']}")


@criterion(weight=0.2)
def tool_use(episode) -> Score:
    """The share of calculator calls that were well formed and evaluated; 0 without any call."""
    calls = episode.state.get("calls", [])
    if not calls:
        return Score(0.0, "the calculator was never called")
    valid = sum(calls)
    return Score(valid / len(calls), f"{valid} of {len(calls)} calls were valid")


@criterion(weight=0.1)
def efficiency(episode) -> Score:
    """A correct answer within 3 turns scores 1, falling linearly to 0 at max_turns + 1."""
    if correct.check(episode).value < 1:
        return Score(0.0, "no correct answer")
    extra = max(0, episode.turn - EFFICIENT_TURNS)
    return Score(max(0.0, 1 - extra / (episode.max_turns - EFFICIENT_TURNS + 1)), f"answered in {episode.turn} turns")


class CalculatorTools(ChatEnv):
    max_turns = 6
    rubric = Rubric([correct, tool_use, efficiency], name="calculator-tools")
    #: The tool, as JSON Schema, for callers that list tools (OpenEnv's MCP tools/list on `envhub
    #: serve`, TRL's environment_factory). A call is the message ``tool_call_template`` with
    #: ``{call}`` replaced by ``{"name": ..., "arguments": ...}`` as JSON.
    tools = [
        {
            "name": "calculator",
            "description": "Evaluate an arithmetic expression: numbers, + - * / // % **, parentheses, "
            "sqrt, abs, round, min, max. Returns the result, or an error saying what is wrong.",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string", "description": "the expression, e.g. 12*(3+4)"}},
                "required": ["expression"],
            },
        }
    ]
    tool_call_template = "<tool>{call}</tool>"

    def sample_task(self, rng: np.random.Generator, split: str) -> dict:
        while True:
            task = generate(int(rng.integers(2**31)))
            if split_of(task["question"]) == split:
                return task

    def get_task(self, task_id: str, split: str) -> dict:
        prefix, _, seed = task_id.partition("-")
        if prefix != "calc" or not seed.isdigit():
            raise TaskNotFoundError(self.env_name, task_id)
        task = generate(int(seed))
        if split_of(task["question"]) != split:
            raise TaskNotFoundError(self.env_name, f"{task_id} (it belongs to the other split)")
        return task

    def initial_messages(self, task: dict) -> list[dict]:
        return [system(SYSTEM_PROMPT), user(task["question"])]

    def respond(self, episode, action: str) -> Reply:
        if ANSWER_TAG.search(action):
            return Reply(done=True)
        calls = TOOL_TAG.findall(action)
        if not calls:
            return Reply([user("Call the calculator with a <tool> call, or give your final <answer>.")])
        replies = []
        for i, call in enumerate(calls):
            valid, text = run_call(call) if i < MAX_CALLS_PER_TURN else (False, "error: too many calls in one message")
            episode.state.setdefault("calls", []).append(valid)
            replies.append(tool(text, name="calculator"))
        return Reply(replies)

    def reference_action(self, episode) -> str:
        """Call the calculator once with the whole calculation, then answer with its result."""
        if not any(m["role"] == "tool" for m in episode.messages):
            call = {"name": "calculator", "arguments": {"expression": episode.task["expression"]}}
            return f"<tool>{json.dumps(call)}</tool>"
        return f"<answer>{episode.task['answer']}</answer>"


def make_env(**kwargs) -> CalculatorTools:
    return CalculatorTools(**kwargs)
