"""Selection rules over score columns: thresholds and quantiles combined with and / or.

    text.qa_relevance > 0.2 and pixels.blank < 0.5
    q(pixels.sharpness) > 0.1            # above the 10th percentile of that column
    (vlm.visual_gain >= 0.05 or text.informativeness > 0.6) and 0 < pixels.brightness < 0.95

Rules are parsed with Python's `ast` into a small whitelist (comparisons, and, or, parentheses,
numbers, dotted column names, q(column)); nothing is ever eval'd. Several rules are and-ed.
A NaN score means "does not apply" (e.g. pixel stats of a text-only sample) and passes.
q(col) op p compares col with np.nanquantile(col, p) over every scored sample (linear interpolation).
A dropped sample is blamed on the first comparison that failed, in reading order.
"""
from __future__ import annotations

import ast
import operator
from dataclasses import dataclass

import numpy as np

from processors.errors import did_you_mean

_OPS = {ast.Gt: (">", operator.gt), ast.GtE: (">=", operator.ge), ast.Lt: ("<", operator.lt),
        ast.LtE: ("<=", operator.le), ast.Eq: ("==", operator.eq), ast.NotEq: ("!=", operator.ne)}
_FLIP = {">": "<", ">=": "<=", "<": ">", "<=": ">=", "==": "==", "!=": "!="}


class RuleError(ValueError):
    """A selection rule that cannot be parsed or names an unknown column."""


@dataclass
class Atom:
    column: str
    op: str
    value: float
    quantile: bool  # value is a quantile level in [0, 1], resolved against the column
    text: str

    def threshold(self, col: np.ndarray) -> float:
        if not self.quantile:
            return self.value
        finite = col[~np.isnan(col)]
        return float(np.quantile(finite, self.value)) if len(finite) else float("nan")

    def describe(self, col: np.ndarray) -> str:
        if not self.quantile:
            return self.text
        return f"{self.text} ({self.column} {self.op} {self.threshold(col):.6g})"


@dataclass
class Node:
    kind: str  # "and" | "or" | "atom"
    children: list["Node"]
    atom: int = -1


def _column_name(node: ast.AST, rule: str) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        raise RuleError(f"rule {rule!r}: expected a score column like text.qa_relevance, got {ast.unparse(node)!r}")
    parts.append(node.id)
    return ".".join(reversed(parts))


def _number(node: ast.AST, rule: str) -> float | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _number(node.operand, rule)
        return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
    return None


def _operand(node: ast.AST, rule: str) -> tuple[str, bool]:
    """(column, is_quantile) of a column reference or q(column)."""
    if isinstance(node, ast.Call):
        if not (isinstance(node.func, ast.Name) and node.func.id == "q" and len(node.args) == 1 and not node.keywords):
            raise RuleError(f"rule {rule!r}: the only function is q(column), got {ast.unparse(node)!r}")
        return _column_name(node.args[0], rule), True
    return _column_name(node, rule), False


class Rule:
    """One or more rule strings, and-ed, compiled to a tree of comparisons."""

    def __init__(self, rules: list[str] | str):
        rules = [rules] if isinstance(rules, str) else list(rules)
        if not rules:
            raise RuleError("no selection rule given; pass --rule \"column > value\"")
        self.atoms: list[Atom] = []
        self.sources = rules
        self.root = Node("and", [self._compile(r) for r in rules])

    def _compile(self, rule: str) -> Node:
        try:
            tree = ast.parse(rule.strip(), mode="eval")
        except SyntaxError as exc:
            raise RuleError(f"rule {rule!r} is not valid: {exc.msg} at column {exc.offset}") from None
        return self._node(tree.body, rule)

    def _node(self, node: ast.AST, rule: str) -> Node:
        if isinstance(node, ast.BoolOp):
            kind = "and" if isinstance(node.op, ast.And) else "or"
            return Node(kind, [self._node(v, rule) for v in node.values])
        if isinstance(node, ast.Compare):
            # a < b < c  ==  a < b and b < c
            terms = [node.left, *node.comparators]
            links = [self._atom(terms[i], op, terms[i + 1], rule) for i, op in enumerate(node.ops)]
            return links[0] if len(links) == 1 else Node("and", links)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            raise RuleError(f"rule {rule!r}: 'not' is not supported; invert the comparison instead")
        raise RuleError(f"rule {rule!r}: expected comparisons joined by and/or, got {ast.unparse(node)!r}")

    def _atom(self, left: ast.AST, op: ast.cmpop, right: ast.AST, rule: str) -> Node:
        if type(op) not in _OPS:
            raise RuleError(f"rule {rule!r}: operator {type(op).__name__} is not a comparison (use > >= < <= == !=)")
        sym = _OPS[type(op)][0]
        lnum, rnum = _number(left, rule), _number(right, rule)
        if (lnum is None) == (rnum is None):
            raise RuleError(f"rule {rule!r}: each comparison needs one column and one number, "
                            f"got {ast.unparse(left)!r} {sym} {ast.unparse(right)!r}")
        if rnum is not None:
            (col, quant), value = _operand(left, rule), rnum
        else:
            (col, quant), value, sym = _operand(right, rule), lnum, _FLIP[sym]
        if quant and not 0.0 <= value <= 1.0:
            raise RuleError(f"rule {rule!r}: q({col}) is compared with a quantile level in [0, 1], got {value:g}")
        text = f"{'q(' + col + ')' if quant else col} {sym} {value:g}"
        self.atoms.append(Atom(col, sym, value, quant, text))
        return Node("atom", [], len(self.atoms) - 1)

    @property
    def columns(self) -> list[str]:
        return sorted({a.column for a in self.atoms})

    def evaluate(self, table: dict[str, np.ndarray]) -> "Verdict":
        missing = [c for c in self.columns if c not in table]
        if missing:
            avail = sorted(k for k in table if k != "id")
            raise RuleError(f"rule column(s) {missing} not in the scores{did_you_mean(missing, avail)}; "
                            f"available: {avail}. "
                            "Run `vlprep score` with the scorer that writes them (e.g. --scorers vlm --model PATH)")
        n = len(next(iter(table.values()))) if table else 0
        masks = []
        for a in self.atoms:
            col = np.asarray(table[a.column], dtype=np.float64)
            with np.errstate(invalid="ignore"):
                masks.append(_OPS_BY_SYM[a.op](col, a.threshold(col)) | np.isnan(col))
        keep = self._eval(self.root, masks, n)
        blame = np.full(n, -1, dtype=np.int64)
        self._blame(self.root, masks, ~keep, blame)
        return Verdict(keep, blame, self, table)

    def _eval(self, node: Node, masks, n) -> np.ndarray:
        if node.kind == "atom":
            return masks[node.atom]
        vals = [self._eval(c, masks, n) for c in node.children]
        return np.logical_and.reduce(vals) if node.kind == "and" else np.logical_or.reduce(vals)

    def _blame(self, node: Node, masks, rows: np.ndarray, blame: np.ndarray) -> None:
        """Assign each failing row (rows=True) to the first atom that made `node` fail."""
        if node.kind == "atom":
            blame[rows & (blame < 0)] = node.atom
            return
        for child in node.children:
            failed_here = rows & ~self._eval(child, masks, len(rows))
            if node.kind == "and":
                self._blame(child, masks, failed_here, blame)
                rows = rows & ~failed_here
            else:  # every child of a failed "or" failed: the first one is the reason
                self._blame(child, masks, rows, blame)
                return


_OPS_BY_SYM = {sym: fn for sym, fn in _OPS.values()}


@dataclass
class Verdict:
    keep: np.ndarray
    blame: np.ndarray  # atom index per dropped row, -1 for kept
    rule: Rule
    table: dict[str, np.ndarray]

    def reason(self, i: int) -> tuple[str, float]:
        """(rule text, the sample's value) for dropped row i."""
        a = self.rule.atoms[self.blame[i]]
        col = np.asarray(self.table[a.column], dtype=np.float64)
        return a.describe(col), float(col[i])

    def dropped_by_rule(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for k in self.blame[self.blame >= 0]:
            a = self.rule.atoms[k]
            key = a.describe(np.asarray(self.table[a.column], dtype=np.float64))
            out[key] = out.get(key, 0) + 1
        return out
