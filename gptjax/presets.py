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
