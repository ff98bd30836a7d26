"""The package's layout rules, checked on its source: no import cycle, no
helper defined twice (under one name in two modules), short files and
functions; and tests that import no command-line module but their own."""
import ast
import collections
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "sgan_jax")
TESTS = os.path.join(ROOT, "tests")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
# Data tables, not logic: one config field per line.
LONG_BY_DESIGN = {("config_lib.py", "reference_config")}
# Module-level function names that several modules define on purpose: each
# command line's entry point.
DEFINED_IN_SEVERAL = {"main"}


def _parsed(top):
  """{path: parsed source} of every Python file below `top`."""
  out = {}
  for folder, _, files in os.walk(top):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        with open(path) as f:
          out[path] = ast.parse(f.read())
  return out


def _modules():
  """{dotted module name: (path, parsed source)} for every file of the package."""
  out = {}
  for path, tree in _parsed(PACKAGE).items():
    rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
    out[rel.removesuffix(".__init__")] = (path, tree)
  return out


def _imported(node, known):
  """The package modules an import statement names (`from pkg import sub`
  names the submodule `pkg.sub` where there is one, else `pkg`)."""
  if isinstance(node, ast.Import):
    names = [a.name for a in node.names]
  elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
    names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known
             else node.module for a in node.names]
  else:
    return set()
  return {n for n in names if n in known}


def _imports_at_top(module, tree, known):
  """Package modules imported at module level (what import cycles are made of)."""
  found = set()
  for node in tree.body:
    found |= _imported(node, known)
  return found - {module}


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


def _module_functions():
  """{function name: [files of the package that define it at module level]}."""
  defined = collections.defaultdict(list)
  for _, (path, tree) in sorted(_modules().items()):
    for node in tree.body:
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        defined[node.name].append(os.path.relpath(path, PACKAGE))
  return defined


@pytest.mark.parametrize("helper", ["unit_rows", "flatten_paths", "path_names", "pad_rows"])
def test_shared_helpers_are_defined_once_in_utils(helper):
  defined = [os.path.relpath(path, PACKAGE) for _, (path, tree) in _modules().items()
             for node in ast.walk(tree)
             if isinstance(node, ast.FunctionDef) and node.name == helper]
  assert defined == ["utils.py"], defined


def test_no_function_name_is_defined_in_two_modules():
  """A second module-level function of the same name is a copy of a helper
  (or two things under one name): one definition, imported where needed."""
  defined = _module_functions()
  twice = {name: files for name, files in defined.items()
           if len(files) > 1 and name not in DEFINED_IN_SEVERAL}
  assert not twice, twice
  assert len(defined["main"]) >= 3   # the check sees the command lines


def _is_flag_definition(node) -> bool:
  """A call that defines absl flags (`flags.DEFINE_string(...)`,
  `config_flags.DEFINE_config_file(...)`, `cli.define_..._flag()`)."""
  if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
    return False
  func = node.value.func
  name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
  return name.startswith(("DEFINE_", "define_"))


def _is_main_guard(node) -> bool:
  return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
          and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def command_line_modules():
  """Package modules that are command lines: they define absl flags when
  imported, have a module-level `main`, or run as `__main__`."""
  found = set()
  for module, (_, tree) in _modules().items():
    if any(_is_flag_definition(node) or _is_main_guard(node)
           or (isinstance(node, ast.FunctionDef) and node.name == "main")
           for node in tree.body):
      found.add(module)
  return found


def _imports_anywhere(tree, known):
  """Package modules a file imports, at module level or inside functions,
  by statement or by `importlib.import_module("sgan_jax....")`."""
  found = set()
  for node in ast.walk(tree):
    found |= _imported(node, known)
    if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module"
        and node.args and isinstance(node.args[0], ast.Constant)
        and node.args[0].value in known):
      found.add(node.args[0].value)
  return found


def _own_test_files(module):
  """The test files of a module: `sgan_jax.a.b` -> test_b.py, test_a_b.py."""
  parts = module.split(".")[1:]
  return {f"test_{parts[-1]}.py", f"test_{'_'.join(parts)}.py"}


def test_the_command_line_modules_are_found():
  assert {"sgan_jax.main", "sgan_jax.evaluate", "sgan_jax.benchmark",
          "sgan_jax.interop.parity"} <= command_line_modules()
  assert "sgan_jax.cli" not in command_line_modules()   # helpers for them, no flags


def test_tests_import_no_command_line_module_but_their_own():
  """Importing a command line defines its absl flags in the test process
  (and couples the tests to it); only that module's own test file may. The
  command lines themselves run as processes (`python -m sgan_jax.main`)."""
  known, clis = set(_modules()), command_line_modules()
  wrong = {name: sorted(m for m in _imports_anywhere(tree, known) & clis
                        if os.path.basename(name) not in _own_test_files(m))
           for name, tree in _parsed(TESTS).items()}
  wrong = {os.path.relpath(name, TESTS): modules for name, modules in wrong.items()
           if modules}
  assert not wrong, wrong
