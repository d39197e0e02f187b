"""The shape of the house: imports run one way, through the layers below; no module is too long.

The import graph is read with `ast` from every module of the package, subpackages included, and
every import counts, at module level and inside functions alike: a function-level import that
goes upward only hides the dependency until that function runs.
"""

from __future__ import annotations

import ast
import os

from conftest import REPO_ROOT

PACKAGE = "gptjax"
PACKAGE_DIR = os.path.join(REPO_ROOT, PACKAGE)
MAX_LINES = 400
# The layers, lowest first. A module may import modules of its own layer (without a cycle) or of
# the layers below it, never one above. A subpackage listed by name ("gptjax.planner") holds all
# of its modules in that layer.
LAYERS = (
    ("gptjax.units", "gptjax.errors"),
    ("gptjax.files", "gptjax.store", "gptjax.optim", "gptjax.compile_cache", "gptjax.devices"),
    ("gptjax.model_config", "gptjax.config", "gptjax.sharding"),
    ("gptjax.model", "gptjax.layers", "gptjax.attention", "gptjax.losses", "gptjax.presets",
     "gptjax.data", "gptjax.command_line", "gptjax.cli"),
    ("gptjax.step", "gptjax.params", "gptjax.hf_gpt2", "gptjax.hf_llama", "gptjax.describe"),
    ("gptjax.checkpoint", "gptjax.generate", "gptjax.planner"),
    ("gptjax.training", "gptjax.accelerator_steps", "gptjax.accelerator_report"),
    ("gptjax.train", "gptjax.sample", "gptjax.eval", "gptjax.compare", "gptjax.plan",
     "gptjax.prepare", "gptjax.convert", "gptjax.show_configs", "gptjax.calculate_params",
     "gptjax.accelerator_check", "gptjax.configs"),
)


def package_modules() -> dict[str, str]:
  """{"gptjax.training.loop": path, ...} for every module of the package and its subpackages."""
  modules = {}
  for root, _, names in os.walk(PACKAGE_DIR):
    for name in sorted(names):
      if name.endswith(".py"):
        parts = os.path.relpath(os.path.join(root, name), REPO_ROOT)[:-3].split(os.sep)
        if parts[-1] == "__init__":
          parts = parts[:-1]
        modules[".".join(parts)] = os.path.join(root, name)
  return modules


def imported_modules(path: str, module: str, modules: set[str]) -> set[str]:
  """The package modules that the file at `path` (module `module`) imports anywhere in its body."""
  found = set()
  package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
  for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # `from . import x`, `from .x import y`
        anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        base = ".".join(filter(None, [anchor, base]))
      # `from gptjax import train` names a module; `from gptjax.train import train` names its module.
      names = [base] + [f"{base}.{alias.name}" for alias in node.names]
    else:
      continue
    found.update(name for name in names if name in modules)
  return found


def import_graph() -> dict[str, set[str]]:
  modules = package_modules()
  return {
      module: imported_modules(path, module, set(modules)) - {module}
      for module, path in modules.items()
  }


def layer_of(module: str) -> int:
  """The index in LAYERS of `module` or of the subpackage holding it; KeyError when unlisted."""
  for index, layer in enumerate(LAYERS):
    if any(module == entry or module.startswith(entry + ".") for entry in layer):
      return index
  raise KeyError(module)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of `graph` as [a, b, ..., a], or None (depth-first search, three colours)."""
  done, on_path = set(), []

  def visit(module):
    on_path.append(module)
    for imported in sorted(graph[module]):
      if imported in on_path:
        return on_path[on_path.index(imported):] + [imported]
      if imported not in done:
        cycle = visit(imported)
        if cycle:
          return cycle
    on_path.pop()
    done.add(module)
    return None

  for module in sorted(graph):
    if module not in done:
      cycle = visit(module)
      if cycle:
        return cycle
  return None


def test_the_graph_sees_every_kind_of_import():
  graph = import_graph()
  assert "gptjax.training.loop" in graph["gptjax.train"]  # inside main()
  assert "gptjax.config" in graph["gptjax.model"]  # `from gptjax.config import ModelConfig`
  assert "gptjax.model" in graph["gptjax.params"]  # inside abstract_params()
  assert "gptjax.planner.fit" in graph["gptjax.training.run"]  # `from gptjax.planner import fit`
  assert "gptjax.data.shards" in graph["gptjax.data.batches"]  # `from gptjax.data.shards import`


def test_find_cycle_names_the_cycle():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert find_cycle(graph) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_gptjax_imports_have_no_cycle():
  cycle = find_cycle(import_graph())
  assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_every_module_has_a_layer_and_imports_only_its_own_or_lower_layers():
  graph = import_graph()
  unlisted = [module for module in graph if module != PACKAGE and not _listed(module)]
  assert not unlisted, f"modules in no layer of LAYERS: {unlisted}"
  upward = [
      f"{module} (layer {layer_of(module)}) imports {imported} (layer {layer_of(imported)})"
      for module, imports in sorted(graph.items()) if module != PACKAGE
      for imported in sorted(imports)
      if imported != PACKAGE and _listed(imported) and layer_of(imported) > layer_of(module)
  ]
  assert not upward, "imports upward:\n" + "\n".join(upward)


def _listed(module: str) -> bool:
  try:
    layer_of(module)
    return True
  except KeyError:
    return False


def test_the_trainer_uses_the_planner_s_fit_alone_and_the_planner_never_samples_or_checkpoints():
  graph = import_graph()
  training = set().union(
      *(imports for module, imports in graph.items() if module.startswith("gptjax.training")))
  assert {m for m in training if m.startswith("gptjax.planner.")} == {"gptjax.planner.fit"}
  planner = set().union(
      *(imports for module, imports in graph.items() if module.startswith("gptjax.planner")))
  assert not planner & {"gptjax.generate", "gptjax.sample", "gptjax.checkpoint"}, planner


def test_the_data_wing_has_no_jax():
  data = [path for module, path in package_modules().items() if module.startswith("gptjax.data")]
  for path in data:
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {(node.module or "").split(".")[0]
                 for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and not node.level}
    assert not imported & {"jax", "flax", "optax", "orbax"}, (path, imported)


def test_no_module_is_longer_than_the_house_rule():
  long = {
      os.path.relpath(path, REPO_ROOT): lines
      for path in package_modules().values()
      if (lines := sum(1 for _ in open(path, encoding="utf-8"))) > MAX_LINES
  }
  assert not long, f"modules over {MAX_LINES} lines: {long}"
