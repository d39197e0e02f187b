"""Parameter reports for `tools/calculate_params.py`: the breakdown, the formulas, interactive input.

Every number is exact: the analytic count of `gptjax.params.count_params`, checked against the count
of the real parameter pytree.
"""

from __future__ import annotations

import sys
from typing import Callable

import ml_collections

from gptjax import config as config_lib
from gptjax import params as params_lib
from gptjax.errors import ConfigError, UserError

ARCHITECTURE_FIELDS = ("n_layer", "n_embd", "n_head", "block_size", "vocab_size", "bias")


def config_from_values(values: dict, base: ml_collections.ConfigDict | None = None
                       ) -> ml_collections.ConfigDict:
  """`base` (default: `get_base_config()`) with `values` set, validated by `gptjax.config.validate`.

  Raises:
    ConfigError: the library's message for the first invalid field.
  """
  config = config_lib.get_base_config() if base is None else base
  for key, value in values.items():
    if value is not None:
      config[key] = value
  config_lib.validate(config)
  return config


def format_report(model_config: config_lib.ModelConfig, pytree_count: int | None = None) -> str:
  """Architecture, per-component breakdown with percentages, and the exact totals.

  Args:
    model_config: the architecture.
    pytree_count: `count_pytree_params(model_config)` if already known; computed when None.
  """
  mc = model_config
  breakdown = params_lib.count_params(mc)
  total = breakdown.total
  if pytree_count is None:
    pytree_count = params_lib.count_pytree_params(mc)
  rows = breakdown.rows()
  label_width = max(len(label) for label, _ in rows + [("Total", 0)])
  count_width = len(f"{total:,}")

  def row(label, count):
    return f"  {label:<{label_width}}  {count:>{count_width},}  {100 * count / total:6.2f}%"

  if pytree_count == total:
    check = "(matches)"
  else:
    check = f"(MISMATCH: differs from the analytic count by {pytree_count - total:+,})"
  flops = params_lib.flops_per_token(mc)
  lines = [
      "Architecture:",
      f"  Layers (L)      : {mc.n_layer}",
      f"  Heads           : {mc.n_head} (head dim {mc.head_dim})",
      f"  Embedding (C)   : {mc.n_embd}",
      f"  Block size (T)  : {mc.block_size}",
      f"  Vocab size (V)  : {mc.vocab_size}",
      f"  Bias            : {mc.bias}",
      "",
      "Parameter breakdown:",
      *[row(label, count) for label, count in rows],
      "  " + "-" * (label_width + count_width + 11),
      row("Total", total),
      "",
      f"  Per layer       : {breakdown.per_layer:,}",
      f"  Total           : {total:,} ({params_lib.format_count(total)})",
      f"  Non-embedding   : {breakdown.non_embedding:,} "
      f"({params_lib.format_count(breakdown.non_embedding)}; nanoGPT's get_num_params(), without wpe)",
      f"  Pytree count    : {pytree_count:,} {check}",
      f"  FLOPs per token : {flops:,} ({flops / 1e9:.2f} GFLOP, training: forward + backward)",
  ]
  return "\n".join(lines)


def seed_approximation(model_config: config_lib.ModelConfig) -> int:
  """The old presets README's estimate 12·L·C² + 2·V·C (an untied head, no wpe, norms or biases)."""
  mc = model_config
  return 12 * mc.n_layer * mc.n_embd**2 + 2 * mc.vocab_size * mc.n_embd


FORMULA = """\
Exact parameter count (gptjax.params.count_params), with
  V = vocab_size, T = block_size, C = n_embd, L = n_layer, b = 1 with --bias else 0:

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

The old presets README's approximation:
  total ~ 12*L*C^2 + 2*V*C
It is off because it counts the output head as a second V*C matrix, but the head is tied to wte
and counted once (an overcount of V*C: 38,633,472 for V=50304, C=768), and it leaves out the
position embeddings (T*C), the layer norms ((2L + 1)*C scales, and as many biases with --bias) and
the dense-layer biases (9*C per layer with --bias).

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
  approx = seed_approximation(model_config)
  return (f"{FORMULA}\n\nFor this architecture:\n"
          f"  exact         : {exact:,}\n"
          f"  approximation : {approx:,} ({approx - exact:+,}, {100 * (approx - exact) / exact:+.2f}%)")


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


def ask_architecture(read_line: Callable[[], str] = None, write: Callable[[str], object] = None,
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
  if read_line is None:
    read_line = sys.stdin.readline
  if write is None:
    def write(text):
      sys.stdout.write(text)
      sys.stdout.flush()
  if echo is None:
    echo = not sys.stdin.isatty()
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
    if isinstance(default, bool):
      shown_default = " [y]" if default else " [n]"
    else:
      shown_default = "" if default is None else f" [{default}]"
    while True:
      write(f"{question}{shown_default}: ")
      line = read_line()
      if not line:  # End of input: readline gives "" only there; an empty answer is "\n".
        write("\n")
        raise UserError(f"input ended before {field} was answered. Fix: give all of "
                        f"{', '.join(ARCHITECTURE_FIELDS)}, one per line (empty keeps a default).")
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
          config_from_values({**answers, field: value})
      except (ValueError, ConfigError) as e:
        write(f"  invalid {field}: {str(e).rstrip('.')}. Try again.\n")
        continue
      answers[field] = value
      break
  return config_from_values(answers)
