"""The import graph of src/rlvr, read from the source: no cycles, and the pure core imports no
framework.

Every `import` counts, at module level or inside a function (a function-level import is still a
dependency: it only hides the cycle from `sys.modules`). A package's `__init__` counts as its own
module; `from rlvr.x import y` depends on rlvr.x (and on rlvr.x.y when that is a module).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """module -> the rlvr modules it imports (anywhere in its source)."""
    files = {module_name(p, src): p for p in src.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            deps.update(t for t in targets if t in files and t != name)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_cycle(tmp_path):
    """A function-level import closing a loop is found (it would pass a sys.modules check)."""
    pkg = tmp_path / "rlvr"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from rlvr.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from rlvr import a\n")
    assert find_cycle(import_graph(tmp_path)) == ["rlvr.a", "rlvr.b", "rlvr.a"]


def test_no_import_cycles_in_rlvr():
    assert find_cycle(import_graph()) is None


PURE = ["rlvr.algorithms.advantages", "rlvr.algorithms.losses", "rlvr.algorithms.logprobs",
        "rlvr.algorithms.importance", "rlvr.rewards", "rlvr.judge", "rlvr.environments", "rlvr.tasks.base",
        "rlvr.tasks.subtraction", "rlvr.tasks.countdown", "rlvr.tasks.gsm8k", "rlvr.prompts", "rlvr.buffer"]
FRAMEWORKS = ("transformers", "peft", "accelerate", "trl", "wandb", "trackio", "mlflow", "vllm")


TEXT_ONLY = ["rlvr.rewards", "rlvr.judge", "rlvr.environments", "rlvr.tasks", "rlvr.tasks.base",
             "rlvr.tasks.subtraction", "rlvr.tasks.countdown", "rlvr.tasks.gsm8k", "rlvr.tasks.reasoning_gym",
             "rlvr.prompts", "rlvr.tools", "rlvr.tasks.calculator"]
"""text in, text or numbers out: not even torch"""


@pytest.mark.parametrize("module", PURE + [f"{m} (no torch)" for m in TEXT_ONLY])
def test_the_core_imports_no_framework(module):
    """Algorithm, reward, task and prompt code imports no model or tracking framework (the text-only
    modules not even torch), anywhere in its source (function-level imports included), nor does
    any rlvr module it imports. DESIGN.md rule 7."""
    banned = FRAMEWORKS + (("torch",) if module.endswith("(no torch)") else ())
    module = module.removesuffix(" (no torch)")
    graph = import_graph()
    if module not in graph:
        pytest.skip(f"{module} does not exist")
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(graph[name])
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    for name in seen:
        for node in ast.walk(ast.parse(files[name].read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad = [n for n in names if n.split(".")[0] in banned]
            assert not bad, f"{module} reaches {name}, which imports {bad}"


MAX_FUNCTION_LINES = 80


def long_functions(src: Path = SRC) -> list[str]:
    """Functions of more than MAX_FUNCTION_LINES lines whose docstring does not say why ("Long because")."""
    out = []
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and "Long because" not in (ast.get_docstring(node) or ""):
                    out.append(f"{path.relative_to(src)}:{node.lineno} {node.name} ({lines} lines)")
    return out


def test_long_function_finder(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "m.py").write_text(f"def f():\n{body}\n\ndef g():\n    '''Long because: a table.'''\n{body}\n")
    assert long_functions(tmp_path) == [f"m.py:1 f ({MAX_FUNCTION_LINES + 1} lines)"]


def test_functions_are_short_or_say_why():
    """A newcomer reads any function of src/ on one screen (the training loop included)."""
    assert long_functions() == []
