"""The package's layout rules, checked on its source: no import cycle, no
helper defined twice under another name, short files and functions."""
import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "sgan_jax")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
# Data tables, not logic: one config field per line.
LONG_BY_DESIGN = {("config_lib.py", "reference_config")}


def _modules():
  """{dotted module name: parsed source} for every file of the package."""
  out = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
        with open(path) as f:
          out[rel.removesuffix(".__init__")] = (path, ast.parse(f.read()))
  return out


def _imports_at_top(module, tree, known):
  """Package modules imported at module level (what import cycles are made of)."""
  found = set()
  for node in tree.body:
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      # `from pkg import sub` imports the submodule `pkg.sub` where there is
      # one (the package itself may still be initialising), else `pkg`.
      names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known
               else node.module for a in node.names]
    else:
      continue
    found.update(n for n in names if n in known and n != module)
  return found


def test_the_package_has_no_import_cycle():
  modules = _modules()
  graph = {m: _imports_at_top(m, tree, modules) for m, (_, tree) in modules.items()}
  state = {}

  def visit(m, path):
    if state.get(m) == "done":
      return
    assert state.get(m) != "open", "import cycle: " + " -> ".join(path + [m])
    state[m] = "open"
    for dep in sorted(graph[m]):
      visit(dep, path + [m])
    state[m] = "done"
  for m in sorted(graph):
    visit(m, [])
  assert len(graph) > 20   # the walk saw the whole package


def test_files_and_functions_are_short():
  too_long = []
  for _, (path, tree) in _modules().items():
    with open(path) as f:
      lines = len(f.readlines())
    name = os.path.relpath(path, PACKAGE)
    if lines > MAX_FILE_LINES:
      too_long.append(f"{name}: {lines} lines")
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        length = node.end_lineno - node.lineno + 1
        if length > MAX_FUNCTION_LINES and (os.path.basename(path), node.name) not in LONG_BY_DESIGN:
          too_long.append(f"{name}:{node.lineno} {node.name}: {length} lines")
  assert not too_long, too_long


@pytest.mark.parametrize("helper", ["unit_rows", "flatten_paths", "path_names"])
def test_shared_helpers_are_defined_once(helper):
  defined = [os.path.relpath(path, PACKAGE) for _, (path, tree) in _modules().items()
             for node in ast.walk(tree)
             if isinstance(node, ast.FunctionDef) and node.name == helper]
  assert defined == ["utils.py"], defined
