"""The package's boundaries, read from its imports: core never imports qgis (nor the QGIS side), what the
plugin imports when QGIS loads it never imports torch at module level, and no module imports itself back."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = os.path.join(ROOT, "landcover_plugin")


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _imports(path: str, top_level_only: bool) -> set[str]:
    """Modules `path` imports (relative imports resolved); with top_level_only, those run at import time:
    not inside functions."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = _module_name(path).rsplit(".", 1)[0] if not path.endswith("__init__.py") else _module_name(path)
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                found |= {f"{module}.{a.name}" for a in node.names} | {module}
            else:
                found.add(node.module)
    return found


def _sources():
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                yield os.path.join(folder, name)


MODULES = {_module_name(p): p for p in _sources()}


def _known(names) -> set[str]:
    """The package's own modules among import names (a name may be a module or something in one)."""
    own = set()
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name:
            own.add(name)
    return own


def test_core_never_imports_qgis_nor_the_qgis_side():
    for module, path in MODULES.items():
        if module.startswith("landcover_plugin.core"):
            bad = {n for n in _imports(path, top_level_only=False)
                   if n.split(".")[0] in ("qgis", "processing") or n.startswith(("landcover_plugin.processing",
                                                                                  "landcover_plugin.plugin"))}
            assert not bad, f"{module} imports {sorted(bad)}"


# core's packages from the bottom up, and the plain modules every one may use; segment.py and many.py, at
# core's top, drive them all and nothing in them imports those
CORE_LAYERS = ["model", "io", "inference", "vector", "evaluation", "training"]
CORE_BASE = {"errors", "stopwatch", "interpreter"}


def _core_part(module: str) -> str | None:
    """"io" for landcover_plugin.core.io.reader, "segment" for landcover_plugin.core.segment; None outside core."""
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["landcover_plugin", "core"] else None


def upward_imports(modules: dict) -> list[str]:
    """Imports, lazy ones included, from a core package to one at its level's top or above it."""
    bad = []
    for module, path in modules.items():
        own = _core_part(module)
        if own not in CORE_LAYERS:
            continue
        for dep in _known(_imports(path, top_level_only=False)):
            target = _core_part(dep)
            if target is None or target == own or target in CORE_BASE:
                continue
            if target not in CORE_LAYERS or CORE_LAYERS.index(target) > CORE_LAYERS.index(own):
                bad.append(f"{module} imports {dep}")
    return bad


def test_core_packages_import_only_packages_below_them():
    """A module that drives a whole run (many rasters: core/many.py) sits above what it drives; reading
    (io) does not reach up into the sliding window (inference)."""
    assert upward_imports(MODULES) == []
    # the rule sees what it is for: the many-rasters driver where it was (inference/many.py), and an io module
    # reaching up into inference as reader.py once did
    core = "landcover_plugin.core"
    where_it_was = upward_imports({f"{core}.inference.many": MODULES[f"{core}.many"]})
    assert sorted(where_it_was) == [f"{core}.inference.many imports {core}.evaluation.report",
                                    f"{core}.inference.many imports {core}.segment"]
    # evaluation.py's lazy imports of the sliding window, as if it were a reading module
    as_io = upward_imports({f"{core}.io.evaluation": MODULES[f"{core}.evaluation.evaluation"]})
    assert f"{core}.io.evaluation imports {core}.inference.sliding" in as_io


def test_what_qgis_loads_imports_no_torch_at_module_level():
    """QGIS imports the plugin and its provider's algorithms when it starts, torch or not: torch (and what
    imports it at module level) waits until an algorithm runs."""
    start = ["landcover_plugin", "landcover_plugin.plugin", "landcover_plugin.processing.provider",
             "landcover_plugin.processing.segment_algorithm", "landcover_plugin.processing.train_algorithm",
             "landcover_plugin.processing.evaluate_algorithm"]
    seen, todo = set(), list(start)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        names = _imports(MODULES[module], top_level_only=True)
        assert not {n for n in names if n.split(".")[0] == "torch"}, f"{module} imports torch when QGIS loads it"
        todo += _known(names) - seen
    assert "landcover_plugin.core.model.device" in seen  # the check reaches into the engine


def _cycle_free(graph) -> None:
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}  # own __init__
    state = {}

    def visit(module, path):
        state[module] = "open"
        for dep in graph.get(module, ()):
            assert state.get(dep) != "open", "import cycle: " + " -> ".join(path + [dep])
            if dep not in state:
                visit(dep, path + [dep])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_no_import_cycles():
    """None at module level anywhere; none at all on the QGIS side (provider, algorithms), where a lazy
    import inside a method once closed one (provider -> algorithms -> algorithm.py -> provider)."""
    _cycle_free({m: _known(_imports(p, top_level_only=True)) - {m} for m, p in MODULES.items()})
    qgis_side = {m: p for m, p in MODULES.items() if m.startswith(("landcover_plugin.processing",
                                                                   "landcover_plugin.plugin"))}
    _cycle_free({m: _known(_imports(p, top_level_only=False)) & set(qgis_side) - {m} for m, p in qgis_side.items()})


def test_files_and_functions_stay_short():
    """No engine module over 300 lines, no function anywhere in the package or the scripts over 60: a part
    that grows past these gets split by what it does."""
    long_files = [p for m, p in MODULES.items() if m.startswith("landcover_plugin.core")
                  and sum(1 for _ in open(p, encoding="utf-8")) > 300]
    assert not long_files
    long_functions = []
    for folder in (PACKAGE, os.path.join(ROOT, "scripts")):
        for path in (os.path.join(d, f) for d, _, files in os.walk(folder) for f in files if f.endswith(".py")):
            for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                    long_functions.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} {node.name}")
    assert not long_functions
