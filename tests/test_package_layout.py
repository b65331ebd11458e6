"""The package's shape: the server, the client and the wire between them import nothing of
each other that they should not, and no module imports itself back (checked on the import
statements, transitively within recsys_tf)."""
import ast
import importlib.util
import pkgutil

import pytest

import recsys_tf

MODEL_CODE = ("recsys_tf.models", "recsys_tf.layers", "recsys_tf.features", "recsys_tf.export",
              "recsys_tf.training", "recsys_tf.backend", "recsys_tf.pipeline", "recsys_tf.data")


def _imports(name, top_level_only=False):
    """The recsys_tf modules ``name`` imports (``top_level_only``: at module level only)."""
    tree = ast.parse(open(importlib.util.find_spec(name).origin).read())
    nodes = tree.body if top_level_only else ast.walk(tree)
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module:
            mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        else:
            continue
        for m in mods:
            if not m.startswith("recsys_tf"):
                continue
            try:
                if importlib.util.find_spec(m) is not None:
                    out.add(m)
            except ModuleNotFoundError:  # "from module import name": a name, not a module
                pass
    return out


def _reach(roots):
    todo, seen = list(roots), set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_imports(name))
    return seen


def _modules(package):
    pkg = importlib.import_module(package)
    return [package] + [f"{package}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__)]


@pytest.mark.parametrize("program, forbidden", [
    ("recsys_tf.client", ("recsys_tf.server",) + MODEL_CODE),
    ("recsys_tf.server", ("recsys_tf.client",) + MODEL_CODE),
    ("recsys_tf.wire", ("recsys_tf.client", "recsys_tf.server") + MODEL_CODE),
])
def test_programs_import_only_themselves_and_the_wire(program, forbidden):
    seen = _reach(_modules(program))
    assert "recsys_tf.wire.contract" in seen or program == "recsys_tf.wire"
    bad = sorted(m for m in seen if m.startswith(forbidden))
    assert not bad, f"{program} reaches {bad}"


def test_no_import_cycle_in_the_package():
    names = []
    for info in pkgutil.walk_packages(recsys_tf.__path__, "recsys_tf."):
        names.append(info.name)
    graph = {n: {m for m in _imports(n, top_level_only=True) if m != n} for n in names}
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                pytest.fail("import cycle: " + " -> ".join(path + [node, nxt]))
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = "done"

    for n in names:
        if n not in state:
            visit(n, [])


def test_rerank_and_contract_import_no_tensorflow():
    import subprocess
    import sys

    code = ("import sys, recsys_tf.client.rerank, recsys_tf.wire.contract; "
            "sys.exit('tensorflow' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
