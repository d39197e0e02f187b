"""The preset catalogue: every config file in `configs/`, as a table and as a detailed view.

Used by `tools/show_configs.py` (plain text) and by the README (markdown). Every count is the exact
integer from `gptjax.params.count_params`, never an approximation.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from gptjax import config as config_lib
from gptjax import params as params_lib
from gptjax.errors import ConfigError

PRESET_EXTENSIONS = (".py", ".json")
# (heading, row key, right-aligned) for the table columns.
TABLE_COLUMNS = (
    ("File", "file", False),
    ("Name", "name", False),
    ("Params", "params", True),
    ("Layers", "n_layer", True),
    ("Heads", "n_head", True),
    ("Embed", "n_embd", True),
    ("Block", "block_size", True),
    ("Vocab", "vocab_size", True),
    ("Batch", "batch_size", True),
)
RULE_WIDTH = 70


def list_preset_files(directory: str = "configs") -> list[str]:
  """Paths of the preset files (`*.py`, `*.json`) in `directory`, sorted by name.

  Files starting with `_` or `.` (e.g. `__init__.py`) are not presets.
  Raises:
    ConfigError: `directory` does not exist.
  """
  if not os.path.isdir(directory):
    raise ConfigError(f"preset directory {directory!r} does not exist. Fix: run from the repository "
                      f"root or pass the directory holding the presets.")
  names = sorted(name for name in os.listdir(directory)
                 if name.endswith(PRESET_EXTENSIONS) and not name.startswith(("_", "."))
                 and os.path.isfile(os.path.join(directory, name)))
  return [os.path.join(directory, name) for name in names]


def load_validated(path: str) -> ml_collections.ConfigDict:
  """`load_config(path)` then `validate`, with the file named in a validation error."""
  config = config_lib.load_config(path)
  try:
    config_lib.validate(config)
  except ConfigError as e:
    raise ConfigError(f"{path}: {e}") from e
  return config


def preset_row(path: str, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """One table row: file, name, exact counts and the architecture of a loaded preset."""
  breakdown = params_lib.count_params(config_lib.ModelConfig.from_config(config))
  return dict(file=os.path.basename(path), name=config.name, params=breakdown.total,
              non_embedding=breakdown.non_embedding, n_layer=config.n_layer, n_head=config.n_head,
              n_embd=config.n_embd, block_size=config.block_size, vocab_size=config.vocab_size,
              batch_size=config.batch_size)


def preset_table(directory: str = "configs") -> list[dict[str, Any]]:
  """One row per preset in `directory`, smallest model first (ties by file name).

  Raises:
    ConfigError: a preset does not load or does not validate (the message names the file).
  """
  rows = [preset_row(path, load_validated(path)) for path in list_preset_files(directory)]
  return sorted(rows, key=lambda row: (row["params"], row["file"]))


def _cells(row: dict[str, Any]) -> list[str]:
  return [f"{row[key]:,}" if key == "params" else str(row[key]) for _, key, _ in TABLE_COLUMNS]


def format_preset_table(rows: list[dict[str, Any]]) -> str:
  """The plain-text catalogue: a heading, then aligned columns with exact parameter counts."""
  headings = [heading for heading, _, _ in TABLE_COLUMNS]
  body = [_cells(row) for row in rows]
  widths = [max(len(cell) for cell in column) for column in zip(headings, *body)]

  def line(cells):
    return "  ".join(cell.rjust(width) if right else cell.ljust(width)
                     for cell, width, (_, _, right) in zip(cells, widths, TABLE_COLUMNS)).rstrip()

  rule_width = max(RULE_WIDTH, sum(widths) + 2 * (len(widths) - 1))
  lines = ["Available Model Configurations", "=" * rule_width, "", line(headings),
           "  ".join("-" * width for width in widths)]
  lines += [line(cells) for cells in body]
  lines += ["", f"{len(rows)} presets. Params are exact (tied output head counted once); "
            f"details: --config_file=<file>."]
  return "\n".join(lines)


def format_preset_markdown(rows: list[dict[str, Any]]) -> str:
  """The catalogue as a markdown table (same columns, exact Params with thousands separators)."""
  headings = [heading for heading, _, _ in TABLE_COLUMNS]
  lines = ["| " + " | ".join(headings) + " |",
           "| " + " | ".join("---:" if right else "---" for _, _, right in TABLE_COLUMNS) + " |"]
  for row in rows:
    cells = _cells(row)
    cells[0] = f"`{cells[0]}`"
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def format_bytes(n: int) -> str:
  """2_433_626_112 -> '2.27 GiB'."""
  for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if n >= scale:
      return f"{n / scale:.2f} {unit}"
  return f"{n} B"


def format_preset_details(path: str, config: ml_collections.ConfigDict) -> str:
  """The detailed view of one (validated) preset: architecture, exact counts, FLOPs, memory, usage."""
  model_config = config_lib.ModelConfig.from_config(config)
  breakdown = params_lib.count_params(model_config)
  flops = params_lib.flops_per_token(model_config)
  memory = params_lib.training_memory_bytes(model_config)
  rule = "=" * RULE_WIDTH
  tokenizer = config_lib.resolve_tokenizer(config)
  tokenizer_note = f"{tokenizer} (auto)" if config.tokenizer == "auto" else tokenizer
  lines = [
      rule,
      f"Config: {config.name}",
      f"File: {path}",
      rule,
      f"Description: {config.description}",
      "",
      "Architecture:",
      f"  Layers        : {config.n_layer}",
      f"  Heads         : {config.n_head} (head dim {model_config.head_dim})",
      f"  Embedding     : {config.n_embd}",
      f"  Block size    : {config.block_size}",
      f"  Vocab size    : {config.vocab_size}",
      f"  Tokenizer     : {tokenizer_note}",
      f"  Dropout       : {config.dropout}",
      f"  Bias          : {config.bias}",
      "",
      "Parameters:",
      f"  Total         : {breakdown.total:,} ({params_lib.format_count(breakdown.total)})",
      f"  Non-embedding : {breakdown.non_embedding:,} "
      f"({params_lib.format_count(breakdown.non_embedding)}; nanoGPT's count, without wpe)",
      f"  Per layer     : {breakdown.per_layer:,}",
      f"  FLOPs/token   : {flops:,} ({flops / 1e9:.2f} GFLOP, training: forward + backward)",
      f"  Train memory  : {memory:,} bytes ({format_bytes(memory)}: float32 params + grads + "
      f"AdamW moments, before activations)",
      f"  Batch size    : {config.batch_size}",
      "",
      "Usage:",
      f"  python -m gptjax.train --config={path} --config.model_name=my_model "
      f"--config.input_file=input.txt",
      rule,
  ]
  return "\n".join(lines)


# --- Memory per preset and target (tools/show_configs.py --memory) -----------------------------------

def fix_label(settings: dict[str, Any], config: ml_collections.ConfigDict) -> str:
  """A short name for the planner's changes: 'remat', 'bf16+remat', 'batch 4x2', 'fsdp 8'."""
  parts = []
  if settings["dtype"] != config.dtype:
    parts.append("bf16" if settings["dtype"] == "bfloat16" else settings["dtype"])
  if settings["remat"] != config.remat:
    parts.append("remat" if settings["remat"] else "no remat")
  if (settings["batch_size"], settings["grad_accum_steps"]) != (config.batch_size,
                                                                config.grad_accum_steps):
    parts.append(f"batch {settings['batch_size']}x{settings['grad_accum_steps']}")
  parts += [f"{axis} {size}" for axis, size in settings["mesh"].items()
            if size != config.mesh[axis] and not (axis == "fsdp" and config.mesh.fsdp == -1)]
  return "+".join(parts) or "as shipped"


def memory_rows(directory: str = "configs", target_names=None, compile: bool = False,
                log=lambda line: None) -> list[dict[str, Any]]:
  """Per preset and target: training memory per device at the shipped settings, whether it fits,
  and where it does not, the fewest changes that fit with 10% free; and sampling memory.

  With `compile`, every figure is XLA's for the compiled step (without the hardware; on GPUs
  extrapolated per layer from 2- and 3-layer compiles, exact there) and every suggested change is
  compiled too;
  the analytic model's figure is kept beside it. Without, the analytic model alone (seconds).
  """
  from gptjax import estimate
  from gptjax import targets as targets_lib
  rows = []
  for row in preset_table(directory):
    config = load_validated(os.path.join(directory, row["file"]))
    cells = {}
    for name in target_names or targets_lib.COMMON_TARGETS:
      log(f"{row['file']} on {name}")
      cells[name] = memory_cell(config, targets_lib.parse_target(name), compile)
    generation = estimate.generation_memory(
        config_lib.ModelConfig.from_config(config), batch=1).total
    rows.append(dict(file=row["file"], params=row["params"], dtype=config.dtype,
                     remat=config.remat, batch=f"{config.batch_size}x{config.block_size}",
                     targets=cells, generation=generation))
  return rows


def memory_cell(config: ml_collections.ConfigDict, target, compile: bool) -> dict[str, Any]:
  """One cell of the memory table (see memory_rows)."""
  from gptjax import estimate, plan
  cell = dict(total=None, analytic=None, fits=False, fix=None, fix_total=None,
              method=estimate.DEVICELESS if compile else estimate.ANALYTIC)
  try:
    cell["analytic"] = estimate.estimate(config, target, method=estimate.ANALYTIC).memory.total
    cell["total"] = (estimate.estimate(config, target, method="compile",
                                       fast=estimate.fast_is_exact(target)).memory.total
                     if compile else cell["analytic"])
    cell["fits"] = cell["total"] <= target.device_memory_bytes
  except ConfigError:  # the shipped batch does not split over this many devices
    pass
  found = None if cell["fits"] else plan.fewest_changes_that_fit(config, target, compile)
  if found:
    cell.update(fix=fix_label(found[0].estimate.settings, config), fix_total=found[1])
  return cell


def _memory_cell(cell: dict[str, Any]) -> str:
  shipped = "batch ∤ devices" if cell["total"] is None else f"{cell['total'] / 2**30:.1f}"
  if cell["fits"]:
    return f"{shipped} ✓"
  if cell["fix"]:
    return f"{shipped} ✗ → {cell['fix']} {cell['fix_total'] / 2**30:.1f}"
  return f"{shipped} ✗"


def format_memory_table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
  """GiB per device for training (✓ fits, ✗ does not → what fits, and its GiB) and sampling."""
  names = list(rows[0]["targets"]) if rows else []
  headings = ["File", "Batch", "Train dtype", *names, "Sample (1 seq)"]
  body = [[row["file"], row["batch"], row["dtype"] + ("+remat" if row["remat"] else ""),
           *[_memory_cell(row["targets"][n]) for n in names], f"{row['generation'] / 2**30:.2f}"]
          for row in rows]
  if markdown:
    lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    lines += ["| " + " | ".join([f"`{r[0]}`", *r[1:]]) + " |" for r in body]
    return "\n".join(lines)
  widths = [max(len(c) for c in column) for column in zip(headings, *body)]
  line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
  return "\n".join([line(headings), "  ".join("-" * w for w in widths), *map(line, body)])
