"""Imports run one way: the gptjax modules' import graph, read with `ast`, has no cycle.

Every import counts, at module level and inside functions alike: a function-level import that
closes a cycle only hides it until that function runs.
"""

from __future__ import annotations

import ast
import os

from conftest import REPO_ROOT

PACKAGE = "gptjax"
PACKAGE_DIR = os.path.join(REPO_ROOT, PACKAGE)


def package_modules() -> dict[str, str]:
  """{"gptjax.train": path, ...} for every module of the package."""
  return {f"{PACKAGE}.{name[:-3]}": os.path.join(PACKAGE_DIR, name)
          for name in sorted(os.listdir(PACKAGE_DIR))
          if name.endswith(".py") and name != "__init__.py"}


def imported_modules(path: str, modules: set[str]) -> set[str]:
  """The package modules that the file at `path` imports anywhere in its body."""
  found = set()
  for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # `from . import x`, `from .x import y`
        base = ".".join([PACKAGE, *filter(None, [base])])
      # `from gptjax import train` names a module; `from gptjax.train import train` names its module.
      names = [base] + [f"{base}.{alias.name}" for alias in node.names]
    else:
      continue
    found.update(name for name in names if name in modules)
  return found


def import_graph() -> dict[str, set[str]]:
  modules = package_modules()
  return {module: imported_modules(path, set(modules)) - {module}
          for module, path in modules.items()}


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


def test_the_graph_sees_module_and_function_level_imports():
  graph = import_graph()
  assert f"{PACKAGE}.hf_gpt2" in graph[f"{PACKAGE}.train"]  # `from gptjax import cli, hf_gpt2, plan`
  assert f"{PACKAGE}.config" in graph[f"{PACKAGE}.model"]  # `from gptjax.config import ModelConfig`
  assert f"{PACKAGE}.model" in graph[f"{PACKAGE}.params"]  # inside abstract_params()


def test_find_cycle_names_the_cycle():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert find_cycle(graph) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_gptjax_imports_have_no_cycle():
  cycle = find_cycle(import_graph())
  assert cycle is None, f"import cycle: {' -> '.join(cycle)}"
