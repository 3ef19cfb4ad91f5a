"""The package's shape, checked from its imports (AST): one-way layers, no cycles, no import of
the concrete ``pipelines`` package, each third-party library owned by one module, and no
torch/transformers in the layers that must work for any pipeline."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "greenknobs"

# Top to bottom; a module may import from its own layer and the layers below.
LAYERS: list[tuple[str, ...]] = [
    ("greenknobs.cli", "greenknobs.__main__", "greenknobs.api"),
    ("greenknobs.search",),
    ("greenknobs.config", "greenknobs.tracking", "greenknobs.spool", "greenknobs.report"),
    ("greenknobs.pipeline", "greenknobs.trial", "greenknobs.phase_store"),
    ("greenknobs.knobs", "greenknobs.meters"),
    ("greenknobs.ml",),
    ("greenknobs.devices",),
    ("greenknobs.context", "greenknobs.phases", "greenknobs.records", "greenknobs.runtime", "greenknobs.units",
     "greenknobs.fingerprint",
     "greenknobs.errors", "greenknobs.processes", "greenknobs.urls"),
]
OUTSIDE_LAYERS = ("greenknobs", "greenknobs.testing")  # the lazy public API and the shipped test support
# (runtime asks torch, lazily and only if installed, how many GPUs there are: it is not listed)
NO_TORCH = ("greenknobs.search", "greenknobs.config", "greenknobs.tracking", "greenknobs.report", "greenknobs.cli",
            "greenknobs.pipeline", "greenknobs.meters", "greenknobs.context", "greenknobs.phases",
            "greenknobs.records", "greenknobs.units", "greenknobs.errors", "greenknobs.devices", "greenknobs.processes",
            "greenknobs.urls", "greenknobs.phase_store", "greenknobs.trial", "greenknobs.fingerprint")
HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "sklearn")
# third-party library -> the one module (or package, for torch: the ml layer's substrate) that imports it
OWNERS = {
    "optuna": {"greenknobs.search.study"},
    "mlflow": {"greenknobs.tracking"},
    "pandas": {"greenknobs.report.tables"},
    "plotly": {"greenknobs.report.plots"},
    "matplotlib": {"greenknobs.report.plots"},
    "yaml": {"greenknobs.config"},
    "transformers": {"greenknobs.ml.hf"},
    "peft": {"greenknobs.ml.lora"},
    "bitsandbytes": {"greenknobs.ml.bnb"},
    "sklearn": {"greenknobs.ml.metrics"},
    "onnxruntime": {"greenknobs.ml.onnx_engine"},
    "onnx": {"greenknobs.ml.onnx_engine"},
    "openvino": {"greenknobs.ml.openvino_engine"},
    "nncf": {"greenknobs.ml.openvino_engine"},
    "pynvml": {"greenknobs.devices.nvml"},
    "zeus": {"greenknobs.meters.zeus_meter"},
    "codecarbon": {"greenknobs.meters.codecarbon_meter"},
    "sqlalchemy": {"greenknobs.search.coordination"},
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module a file imports (absolute), including lazy imports inside functions."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            for a in node.names:  # "from greenknobs.ml import hf" imports the module greenknobs.ml.hf
                found.add(f"{mod}.{a.name}")
    return found


MODULES = {module_name(p): imports_of(p) for p in PKG.rglob("*.py")}


def layer_of(mod: str) -> int | None:
    best = None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            inside = mod == prefix or mod.startswith(prefix + ".")
            if inside and (best is None or len(prefix) > best[1]):
                best = (i, len(prefix))
    return best[0] if best else None


def internal(imports: set[str]) -> set[str]:
    """Imported greenknobs modules that exist (drops names that are attributes, not modules)."""
    return {m for m in imports if m in MODULES or (m.startswith("greenknobs.") and m in MODULES)}


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if layer_of(m) is None and m not in OUTSIDE_LAYERS and not m.startswith("greenknobs.testing")]
    assert not missing, f"modules outside the layer map: {missing}"


def test_layers_import_only_downwards():
    violations = []
    for mod, imports in MODULES.items():
        mine = layer_of(mod)
        if mine is None:
            continue
        for target in internal(imports):
            theirs = layer_of(target)
            if theirs is not None and theirs < mine:
                violations.append(f"{mod} (layer {mine}) imports {target} (layer {theirs})")
    assert not violations, "\n".join(violations)


def test_no_import_cycles():
    graph = {m: internal(imps) - {m} for m, imps in MODULES.items()}
    # a package's __init__ importing its own submodules is how registration works; the cycle we
    # forbid is between modules, so edges into a package's own __init__ from inside it are dropped
    for m, targets in graph.items():
        graph[m] = {t for t in targets if not (m.startswith(t + ".") and t in MODULES)}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_framework_does_not_import_pipelines():
    offenders = [m for m, imps in MODULES.items() if any(i == "pipelines" or i.startswith("pipelines.") for i in imps)]
    assert not offenders, offenders


@pytest.mark.parametrize("layer", NO_TORCH)
def test_core_layers_do_not_import_torch_or_transformers(layer):
    offenders = [(m, sorted(i for i in imps if i.split(".")[0] in HEAVY))
                 for m, imps in MODULES.items() if m == layer or m.startswith(layer + ".")]
    offenders = [(m, i) for m, i in offenders if i]
    assert not offenders, offenders


@pytest.mark.parametrize("library", sorted(OWNERS))
def test_each_library_has_one_owner(library):
    importers = {m for m, imps in MODULES.items() if any(i == library or i.startswith(library + ".") for i in imps)}
    importers -= {m for m in importers if m.startswith("greenknobs.testing")}
    assert importers <= OWNERS[library], f"{library} imported by {sorted(importers - OWNERS[library])}"


def test_report_and_tracking_load_without_torch():
    """Stronger than the static check: importing them really does not load torch (a vision or
    tabular pipeline's users read reports without it)."""
    code = ("import sys; import greenknobs, greenknobs.report.tables, greenknobs.report.plots, greenknobs.tracking, "
            "greenknobs.records; print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_public_api():
    import greenknobs

    assert greenknobs.__version__
    for name in greenknobs.__all__:
        assert getattr(greenknobs, name) is not None
    out = subprocess.run([sys.executable, "-m", "greenknobs", "knobs", "--json"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0 and '"name": "data.max_seq_len"' in out.stdout
