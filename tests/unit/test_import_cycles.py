"""No import cycles between modelport's modules, and the registry loads without any toolchain.

The graph is read statically (ast), so a function-level import counts like a top-level one: the
four cycles the 2026-12 review found (targets/onnx <-> onnx_lm, coreml <-> coreml_lm, mlc <->
mlc_browser, source <-> tiny) were all hidden behind function-level imports.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PKG = SRC / "modelport"


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PKG.rglob("*.py") if "node_modules" not in p.parts}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                if t in modules and t != name:
                    # a package's __init__ importing its own submodules is how registration works
                    if name == t.rpartition(".")[0] and path.name == "__init__.py":
                        continue
                    graph[name].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                found.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return found


def test_no_import_cycles() -> None:
    graph = _graph()
    assert len(graph) > 30
    assert _cycles(graph) == []


def test_the_four_reviewed_cycles_stay_gone() -> None:
    graph = _graph()
    for a, b in (("modelport.source", "modelport.tiny"),):
        assert not (b in graph[a] and a in graph[b]), (a, b)
    for target in ("onnx", "coreml", "mlc"):
        mods = [m for m in graph if m.startswith(f"modelport.targets.{target}.")]
        for m in mods:
            for other in graph[m]:
                assert not (other in mods and m in graph[other]), (m, other)


def test_targets_never_import_each_other() -> None:
    graph = _graph()
    for m, deps in graph.items():
        if m.startswith("modelport.targets.") and m.count(".") >= 3:
            own = ".".join(m.split(".")[:3])
            for d in deps:
                if d.startswith("modelport.targets.") and d != "modelport.targets.registry":
                    assert d.startswith(own), f"{m} imports {d}"


def test_registry_loads_without_any_toolchain() -> None:
    """The validator image has no torch, each toolchain image only its own toolchain: importing the
    registry (every target package) must not import any of them."""
    code = ("import sys\n"
            "for m in ('torch', 'transformers', 'onnx', 'onnxruntime', 'onnxscript', 'coremltools', 'mlx', 'mlx_lm',"
            " 'tvm'):\n    sys.modules[m] = None\n"
            "from modelport.targets import REGISTRY\n"
            "import modelport.validate, modelport.convert, modelport.cli\n"
            "print(len(REGISTRY.pairs()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    from modelport.targets import REGISTRY

    # every pair registers without a toolchain (none is skipped for a missing import)
    assert int(out.stdout.strip()) == len(REGISTRY.pairs()) >= 7


def test_no_module_attribute_probing_of_targets() -> None:
    hits = [f"{p}:{i}" for p in PKG.rglob("*.py") if "node_modules" not in p.parts
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if "getattr(module" in line or "hasattr(module" in line]
    assert hits == []
