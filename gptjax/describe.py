"""What gptjax prints about a preset: the catalogue, one preset in detail, the parameter report
and its formula (`python -m gptjax.show_configs`, `python -m gptjax.calculate_params`, README).

Every count is the exact integer from `gptjax.params.count_params`, never an approximation; the
numbers come from gptjax/params.py, the words and layout from here.
"""

from __future__ import annotations

import sys
import textwrap
from typing import Any, Callable

import ml_collections

from gptjax import config as config_lib
from gptjax import params as params_lib
from gptjax import presets
from gptjax.units import format_bytes, format_count
from gptjax.errors import ConfigError, UserError

# (heading, row key, right-aligned) for the table columns.
TABLE_COLUMNS = (("Preset", "preset", False), ("Name", "name", False), ("Params", "params", True),
                 ("Layers", "n_layer", True), ("Heads", "n_head", True), ("Embed", "n_embd", True),
                 ("Block", "block_size", True), ("Vocab", "vocab_size", True), ("Batch",
                                                                                "batch_size", True))
MFU_NOTE = ("est. MFU: compile-only estimates for the shipped settings (v5e-1: XLA's TPU cost "
            "model; H100: the expected time, the per-kernel roofline over 0.565, the roofline's "
            "MFU in brackets); ✗: does not fit as shipped (python -m gptjax.plan --search finds "
            "what does); –: not planned.")
# The planned MFU columns (est., compile-only) that show_configs adds from the shipped memory table.
MFU_COLUMNS = (("est. MFU v5e-1", "mfu_tpu-v5e-1", True), ("est. MFU H100", "mfu_gpu-h100-80gb",
                                                           True))
RULE_WIDTH = 70
# The label of each architecture field, with the letter the formula calls it by.
ARCHITECTURE_LABELS = {
    "n_layer": "Layers (L)",
    "n_head": "Heads",
    "n_embd": "Embedding (C)",
    "block_size": "Block size (T)",
    "vocab_size": "Vocab size (V)",
    "bias": "Bias"
}
LABEL_WIDTH = len("FLOPs per token")

# --- The catalogue (show_configs, the README's table) -------------------------------------------


def preset_row(preset: str, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """One table row: preset, name, exact counts and the architecture of a loaded preset."""
  breakdown = params_lib.count_params(config_lib.ModelConfig.from_config(config))
  return dict(preset=preset,
              name=config.name,
              params=breakdown.total,
              non_embedding=breakdown.non_embedding,
              n_layer=config.n_layer,
              n_head=config.n_head,
              n_embd=config.n_embd,
              block_size=config.block_size,
              vocab_size=config.vocab_size,
              batch_size=config.batch_size)


def preset_table(directory: str | None = None) -> list[dict[str, Any]]:
  """One row per preset (default: the shipped ones; or those in `directory`), smallest model
  first (ties by name).

  Raises:
    ConfigError: a preset does not load or does not validate (the message names it).
  """
  rows = [
      preset_row(name, presets.load_validated(path))
      for name, path in presets.catalogue(directory).items()
  ]
  return sorted(rows, key=lambda row: (row["params"], row["preset"]))


def _columns(rows: list[dict[str, Any]]) -> tuple[tuple[str, str, bool], ...]:
  return TABLE_COLUMNS + (MFU_COLUMNS if rows and MFU_COLUMNS[0][1] in rows[0] else ())


def _cells(row: dict[str, Any], columns) -> list[str]:
  return [f"{row[key]:,}" if key == "params" else str(row[key]) for _, key, _ in columns]


def format_preset_table(rows: list[dict[str, Any]]) -> str:
  """The plain-text catalogue: a heading, then aligned columns with exact parameter counts."""
  columns = _columns(rows)
  headings = [heading for heading, _, _ in columns]
  body = [_cells(row, columns) for row in rows]
  widths = [max(len(cell) for cell in column) for column in zip(headings, *body)]

  def line(cells):
    return "  ".join(
        cell.rjust(width) if right else cell.ljust(width)
        for cell, width, (_, _, right) in zip(cells, widths, columns)).rstrip()

  rule_width = max(RULE_WIDTH, sum(widths) + 2 * (len(widths) - 1))
  lines = [
      "Available Model Configurations", "=" * rule_width, "",
      line(headings), "  ".join("-" * width for width in widths)
  ]
  lines += [line(cells) for cells in body]
  lines += [
      "", f"{len(rows)} presets. Params are exact (tied output head counted once); "
      f"details: --config=<preset>."
  ]
  if len(columns) > len(TABLE_COLUMNS):
    lines.append(textwrap.fill(MFU_NOTE, RULE_WIDTH + 30))
  return "\n".join(lines)


def format_preset_markdown(rows: list[dict[str, Any]]) -> str:
  """The catalogue as a markdown table (same columns, exact Params with thousands separators)."""
  columns = _columns(rows)
  headings = [heading for heading, _, _ in columns]
  lines = [
      "| " + " | ".join(headings) + " |",
      "| " + " | ".join("---:" if right else "---" for _, _, right in columns) + " |"
  ]
  for row in rows:
    cells = _cells(row, columns)
    cells[0] = f"`{cells[0]}`"
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


# --- One architecture: the blocks both tools print ------------------------------------------------


def _field(label: str, value) -> str:
  return f"  {label:<{LABEL_WIDTH}} : {value}"


def architecture_lines(model_config: config_lib.ModelConfig, *more: tuple[str, Any]) -> list[str]:
  """The "Architecture:" block: every ARCHITECTURE_FIELDS entry, then the (label, value) `more`."""
  values = {
      **model_config.architecture(), "n_head":
          f"{model_config.n_head} (head dim {model_config.head_dim})"
  }
  options = [  # the architecture options that are not GPT-2's, by field name
      _field(option, value)
      for option, value in (o.split("=", 1) for o in model_config.non_gpt2_options())
  ]
  return [
      "Architecture:", *[
          _field(ARCHITECTURE_LABELS[field], values[field])
          for field in config_lib.ARCHITECTURE_FIELDS
      ], *options, *[_field(label, value) for label, value in more]
  ]


def count_lines(model_config: config_lib.ModelConfig, pytree_count: int | None = None) -> list[str]:
  """Per layer, total and non-embedding counts (and the pytree's, when given), FLOPs per token."""
  breakdown = params_lib.count_params(model_config)
  total, non_embedding = breakdown.total, breakdown.non_embedding
  flops = params_lib.flops_per_token(model_config)
  lines = [
      _field("Per layer", f"{breakdown.per_layer:,}"),
      _field("Total", f"{total:,} ({format_count(total)})"),
      _field(
          "Non-embedding", f"{non_embedding:,} ({format_count(non_embedding)}; nanoGPT's "
          f"get_num_params(), without wpe)")
  ]
  if pytree_count is not None:
    check = ("(matches)" if pytree_count == total else
             f"(MISMATCH: differs from the analytic count by {pytree_count - total:+,})")
    lines.append(_field("Pytree count", f"{pytree_count:,} {check}"))
  return lines + [
      _field("FLOPs per token",
             f"{flops:,} ({flops / 1e9:.2f} GFLOP, training: forward + backward)")
  ]


def breakdown_rows(breakdown: params_lib.ParamBreakdown) -> list[tuple[str, int]]:
  """(component, count) rows for printing, summing to `breakdown.total`."""
  L, tied = breakdown.n_layer, not breakdown.output_head
  head = ("output head (tied to wte)", 0) if tied else ("output head (lm_head)",
                                                        breakdown.output_head)
  return [(f"token embedding (wte{', tied output head' if tied else ''})",
           breakdown.token_embedding), ("position embedding (wpe)", breakdown.position_embedding),
          (f"attention ({L} x {breakdown.attention:,})", L * breakdown.attention),
          (f"MLP ({L} x {breakdown.mlp:,})", L * breakdown.mlp),
          (f"layer norms ({L} x {breakdown.layer_norms:,})", L * breakdown.layer_norms),
          ("final layer norm (ln_f)", breakdown.final_norm), head]


def format_preset_details(preset: str, config: ml_collections.ConfigDict) -> str:
  """The detailed view of one (validated) preset: architecture, exact counts, FLOPs, memory, usage."""
  model_config = config_lib.ModelConfig.from_config(config)
  memory = params_lib.training_memory_bytes(model_config)
  rule = "=" * RULE_WIDTH
  tokenizer = config_lib.resolve_tokenizer(config)
  return "\n".join([
      rule, f"Config: {config.name}", f"Preset: {preset}",
      rule, f"Description: {config.description}", "", *architecture_lines(
          model_config,
          ("Tokenizer", f"{tokenizer} (auto)" if config.tokenizer == "auto" else tokenizer),
          ("Dropout", config.dropout)), "", "Parameters:", *count_lines(model_config),
      _field(
          "Train memory", f"{memory:,} bytes ({format_bytes(memory)}: float32 params + grads "
          f"+ AdamW moments, before activations)"),
      _field("Batch size", config.batch_size), "", *optimizer_lines(config), "", "Usage:",
      f"  python -m gptjax.train --config={preset} --config.model_name=my_model "
      f"--config.input_file=input.txt", rule
  ])


def optimizer_lines(config: ml_collections.ConfigDict) -> list[str]:
  """Which optimizer updates each parameter (and, for Muon, which matrices it orthogonalises)."""
  if config.optimizer != "muon":
    return [_field("Optimizer", f"AdamW on every parameter, {config.lr_schedule} schedule")]
  import flax.linen as nn
  from gptjax import optim
  boxed = params_lib.abstract_params(config_lib.ModelConfig.from_config(config))
  rows = optim.assignment_table(nn.get_partition_spec(boxed), nn.meta.unbox(boxed))
  width = max(len(path) for path, *_ in rows)
  return [
      _field("Optimizer", f"Muon on the hidden matrices, AdamW on the rest, "
             f"{config.lr_schedule} schedule"), *[
                 f"  {path:<{width}}  {str(shape):<16} {optimizer:<6} {what}".rstrip()
                 for path, shape, optimizer, what in rows
             ]
  ]


# --- The parameter report (calculate_params) ------------------------------------------------------


def format_report(model_config: config_lib.ModelConfig, pytree_count: int | None = None) -> str:
  """Architecture, per-component breakdown with percentages, and the exact totals.

  Args:
    model_config: the architecture.
    pytree_count: `count_pytree_params(model_config)` if already known; computed when None.
  """
  total = params_lib.count_params(model_config).total
  if pytree_count is None:
    pytree_count = params_lib.count_pytree_params(model_config)
  rows = breakdown_rows(params_lib.count_params(model_config))
  label_width = max(len(label) for label, _ in rows + [("Total", 0)])
  count_width = len(f"{total:,}")

  def row(label, count):
    return f"  {label:<{label_width}}  {count:>{count_width},}  {100 * count / total:6.2f}%"

  return "\n".join([
      *architecture_lines(model_config), "", "Parameter breakdown:",
      *[row(label, count) for label, count in rows], "  " + "-" * (label_width + count_width + 11),
      row("Total", total), "", *count_lines(model_config, pytree_count)
  ])


def usual_approximation(model_config: config_lib.ModelConfig) -> int:
  """The usual estimate 12·L·C² + 2·V·C (an untied head, no wpe, norms or biases)."""
  mc = model_config
  return 12 * mc.n_layer * mc.n_embd**2 + 2 * mc.vocab_size * mc.n_embd


FORMULA = """\
Exact parameter count (gptjax.params.count_params), with
  V = vocab_size, T = block_size, C = n_embd, L = n_layer, b = 1 with bias, else 0:

  token embedding   wte           V*C            (also the output head: tied, counted once)
  position embed.   wpe           T*C
  per layer (x L):
    ln_1, ln_2      scale (+bias) 2*(C + b*C)
    attn.c_attn     C x 3C        3*C^2 + b*3*C
    attn.c_proj     C x C         C^2   + b*C
    mlp.c_fc        C x 4C        4*C^2 + b*4*C
    mlp.c_proj      4C x C        4*C^2 + b*C
                    = per layer   12*C^2 + 2*C + b*11*C
  final norm        ln_f          C + b*C
  output head       lm_head       0              (tied to wte)

  total         = V*C + T*C + L*(12*C^2 + (2 + 11*b)*C) + (1 + b)*C
  non-embedding = total - T*C    (nanoGPT's get_num_params(): wte stays in, as it is the head)

The usual approximation:
  total ~ 12*L*C^2 + 2*V*C
It is off because it counts the output head as a second V*C matrix, but the head is tied to wte
and counted once (an overcount of V*C: 38,633,472 for V=50304, C=768), and it leaves out the
position embeddings (T*C), the layer norms ((2L + 1)*C scales, and as many biases with bias) and
the dense-layer biases (9*C per layer with bias).

Training FLOPs per token (gptjax.params.flops_per_token; PaLM appendix B):
  flops = 6*N + 12*L*T*C,   N = non-embedding count
  6*N: each weight does a multiply-add forward (2) and two backward (4), the tied head included;
  12*L*T*C: the attention scores QK^T and the weighted sum AV at full context T, forward + backward.
Training state (gptjax.params.training_memory_bytes): 16 bytes a parameter in float32
  (params + grads + AdamW's two moments), activations on top."""


def format_formula(model_config: config_lib.ModelConfig | None = None) -> str:
  """The formula text; with a config, the exact count and the approximation side by side."""
  if model_config is None:
    return FORMULA
  exact = params_lib.count_params(model_config).total
  approx = usual_approximation(model_config)
  options = model_config.non_gpt2_options()  # the formula is GPT-2's; the exact count is not
  note = (f"\n  (the formula is GPT-2's: with {', '.join(options)} the exact count is params.py's "
          f"count_params, docs/training.md)" if options else "")
  return (
      f"{FORMULA}\n\nFor this architecture:\n"
      f"  exact         : {exact:,}\n"
      f"  approximation : {approx:,} ({approx - exact:+,}, {100 * (approx - exact) / exact:+.2f}%)"
      + note)


def _parse_positive_int(answer: str) -> int:
  try:
    value = int(answer)
  except ValueError:
    raise ValueError(f"{answer!r} is not an integer") from None
  if value <= 0:
    raise ValueError(f"{value} must be a positive integer")
  return value


def _parse_yes_no(answer: str) -> bool:
  if answer.lower() in ("y", "yes", "true", "1"):
    return True
  if answer.lower() in ("n", "no", "false", "0"):
    return False
  raise ValueError(f"{answer!r} is not y or n")


def ask_architecture(read_line: Callable[[], str] = None,
                     write: Callable[[str], object] = None,
                     echo: bool | None = None) -> ml_collections.ConfigDict:
  """Asks for the architecture one field at a time; re-asks with the reason after a bad answer.

  Args:
    read_line: returns the next line of input, "" at end of input (default: sys.stdin.readline).
    write: writes prompts and messages (default: sys.stdout.write, flushed).
    echo: write each answer after its prompt (default: when stdin is not a terminal, so piped
      answers show up in the transcript).
  Returns:
    The validated ConfigDict (base config with the answers set).
  Raises:
    UserError: the input ended before every field was answered.
  """
  read_line = read_line or sys.stdin.readline
  write = write or (lambda text: (sys.stdout.write(text), sys.stdout.flush()))
  echo = not sys.stdin.isatty() if echo is None else echo
  questions = (
      ("n_layer", "Number of layers (n_layer)", None, _parse_positive_int),
      ("n_embd", "Embedding dimension (n_embd)", None, _parse_positive_int),
      ("n_head", "Number of attention heads (n_head)", None, _parse_positive_int),
      ("block_size", "Context length (block_size)", None, _parse_positive_int),
      ("vocab_size", "Vocabulary size (vocab_size)", config_lib.GPT2_PADDED_VOCAB_SIZE,
       _parse_positive_int),
      ("bias", "Use bias (y/n)", False, _parse_yes_no),
  )
  answers = {}
  for field, question, default, parse in questions:
    shown_default = (f" [{'y' if default else 'n'}]"
                     if isinstance(default, bool) else "" if default is None else f" [{default}]")
    while True:
      write(f"{question}{shown_default}: ")
      line = read_line()
      if not line:  # End of input: readline gives "" only there; an empty answer is "\n".
        write("\n")
        raise UserError(f"input ended before {field} was answered. Fix: give all of "
                        f"{', '.join(config_lib.ARCHITECTURE_FIELDS)}, one per line (empty keeps a "
                        f"default).")
      answer = line.strip()
      if echo:
        write(f"{answer}\n")
      try:
        if not answer and default is not None:
          value = default
        elif not answer:
          raise ValueError("an answer is required")
        else:
          value = parse(answer)
        # Let the library judge the fields asked so far, once n_head can be checked against
        # n_embd: a bad n_head is what is asked again, not the n_embd before it.
        if field in ("n_head", "vocab_size"):
          presets.with_values({**answers, field: value})
      except (ValueError, ConfigError) as e:
        write(f"  invalid {field}: {str(e).rstrip('.')}. Try again.\n")
        continue
      answers[field] = value
      break
  return presets.with_values(answers)
