"""The package's imports point one way (no module reaches, however indirectly, back to itself).

Read from the source with `ast`, so function-level and TYPE_CHECKING imports count too: a
circle hidden in a function is still a circle in the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

import edropout_ray

PACKAGE = Path(edropout_ray.__file__).parent
MAX_MODULE_LINES = 400
MAX_TOP_LEVEL_MODULES = 12
# Bottom to top: a module may import its own layer and the layers below, never one above. A name is a
# top-level module or a subpackage (all of its modules); "" is the package's own __init__.
LAYERS = (
    ("errors", "choices", "imports", "config_values", "config", "models"),
    ("data",),
    ("evolution",),
    ("pruning",),
    ("artifacts",),
    ("training",),
    ("baselines",),
    ("distributed",),
    ("train", "compare", "sweep", "catalog", "cli", "__main__", ""),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that the file at `path` imports (anywhere in it)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from . import checkpoint` names modules, not the package; `from .data import load_dataset` an object
            named = [f"{base}.{alias.name}" for alias in node.names]
            targets = named + ([base] if any(n not in modules for n in named) else [])
        else:
            continue
        found |= {t for t in targets if t in modules}
    return found - {name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, grey = on the current path)."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        path.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == grey:
                return path[path.index(nxt):] + [nxt]
            if colour[nxt] == white and (cycle := visit(nxt)):
                return cycle
        colour[node] = black
        path.pop()
        return None

    for start in sorted(graph):
        if colour[start] == white and (cycle := visit(start)):
            return cycle
    return None


def layer_of(module: str, layers=LAYERS) -> int:
    """The index in `layers` of a module's top-level name (`edropout_ray.pruning.space` -> "pruning")."""
    top = module.split(".")[1] if "." in module else ""
    for index, names in enumerate(layers):
        if top in names:
            return index
    raise AssertionError(f"{module} is in no layer: add {top!r} to LAYERS in tests/unit/test_layering.py")


def upward_imports(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    """Every import of a higher layer, as a message naming the module, the import and the fix."""
    found = []
    for module, imported in sorted(graph.items()):
        for target in sorted(imported):
            if layer_of(target, layers) > layer_of(module, layers):
                found.append(f"{module} (layer {layer_of(module, layers)}) imports {target} (layer "
                             f"{layer_of(target, layers)}): pass what it needs in as arguments, or move the shared "
                             f"code down to layer {layer_of(module, layers)} or below")
    return found


def test_the_graph_sees_relative_lazy_and_package_imports():
    graph = import_graph()
    assert "edropout_ray.training.run_setup" in graph["edropout_ray.train"]  # from .training.run_setup import ...
    assert "edropout_ray.baselines.registry" in graph["edropout_ray.train"]
    assert "edropout_ray.distributed.cluster" in graph["edropout_ray.train"]  # inside a function
    assert "edropout_ray.data" in graph["edropout_ray.training.run_setup"]  # a subpackage
    assert "edropout_ray.data.common" in graph["edropout_ray.data.idx"]  # relative, one level, in it
    assert "edropout_ray.artifacts.checkpoint" in graph["edropout_ray.training.loop"]  # from ..artifacts import checkpoint
    assert "edropout_ray.artifacts" not in graph["edropout_ray.training.loop"]  # ... which names a module, not the package
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_package_imports_have_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle) + "; move what they share into a module below both"


def test_no_module_is_over_400_lines():
    lines = {module_name(p): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    long = {name: n for name, n in lines.items() if n > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by idea): {long}"


def test_the_layer_check_finds_a_lower_layer_importing_a_higher_one():
    layers = (("config",), ("pruning",), ("train",))
    config, space, train = "edropout_ray.config", "edropout_ray.pruning.space", "edropout_ray.train"
    graph = {config: {space}, space: {config}, train: {space, config}}
    found = upward_imports(graph, layers)
    assert len(found) == 1
    assert found[0].startswith(f"{config} (layer 0) imports {space} (layer 1)")
    assert "move the shared code down" in found[0]
    assert upward_imports({"edropout_ray.train": {"edropout_ray.config"}}, layers) == []


def test_every_module_is_in_a_layer():
    for module in import_graph():
        layer_of(module)


def test_no_module_imports_a_higher_layer():
    found = upward_imports(import_graph())
    assert not found, "imports of a higher layer:\n" + "\n".join(found)


def test_the_package_top_level_holds_at_most_12_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, (
        f"{len(top)} modules at the package top level (at most {MAX_TOP_LEVEL_MODULES}): {top}; "
        "put the new one in the layer subpackage it belongs to")
