"""Static check: the code under lib/ never pulls a whole DataFrame or RDD onto the driver.

On a cluster the driver has one machine's memory while the tables contain every user, so a
`collect()` of per-user rows works on a laptop and fails at scale. A call that returns a
bounded result (a handful of rows, one aggregate) may stay if it is listed in
`REVIEWED_DRIVER_READS` and its line carries a `# bounded: <why>` comment.
"""

from __future__ import annotations

import ast
from pathlib import Path

LIB_DIR = Path(__file__).resolve().parents[1] / "lib"

DRIVER_READS = {"collect", "collectAsMap", "toPandas", "toArrow", "toLocalIterator"}
"""DataFrame and RDD methods that bring every row of their input to the driver."""

REVIEWED_DRIVER_READS: dict[tuple[str, str], str] = {
    ("behaviorgpt/sequences.py", "write_example_shards"):
        "one summary row per example shard file written, not per user",
}
"""(path under lib/, enclosing function) -> why the result is bounded. Besides these, the
pipeline reads only single-row aggregates (`first()`) and `show()` samples on the driver."""

BOUNDED_MARK = "# bounded:"


def find_driver_reads(source: str) -> list[tuple[int, str, str]]:
    """Return (line, method, enclosing function) for every call of a DRIVER_READS method."""
    found = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            scope = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                else function
            if (isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute)
                    and child.func.attr in DRIVER_READS):
                found.append((child.lineno, child.func.attr, function))
            visit(child, scope)

    visit(ast.parse(source), "<module>")
    return found


def test_driver_reads_finder_sees_calls():
    source = (
        "def load(df):\n"
        "    rows = df.collect()\n"
        "    frame = df.limit(5).toPandas()\n"
        "    names = F.collect_list('x')\n"
        "    return df.rdd.toLocalIterator()\n"
    )

    found = find_driver_reads(source)

    assert found == [(2, "collect", "load"), (3, "toPandas", "load"),
                     (5, "toLocalIterator", "load")]


def test_lib_has_no_unreviewed_driver_reads():
    unreviewed = []
    unmarked = []
    for path in sorted(LIB_DIR.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        relative = str(path.relative_to(LIB_DIR))
        for line, method, function in find_driver_reads(source):
            where = f"{relative}:{line} {method}() in {function}"
            if (relative, function) not in REVIEWED_DRIVER_READS:
                unreviewed.append(where)
            elif BOUNDED_MARK not in lines[line - 1]:
                unmarked.append(where)

    assert unreviewed == [], "driver reads outside the reviewed list"
    assert unmarked == [], f"reviewed driver reads without a '{BOUNDED_MARK}' comment"
