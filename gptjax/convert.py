"""Hugging Face GPT-2 checkpoints in and out of gptjax run directories, `python -m gptjax.convert`.

  python -m gptjax.convert --from_hf DIR --out out/gpt2        # HF GPT-2 -> a gptjax run directory
  python -m gptjax.convert --run_dir out/gpt2 --to_hf DIR      # a run's checkpoint -> HF GPT-2

A model trained with options beyond GPT-2's (rope, rmsnorm, swiglu; GQA, an untied head) exports
to Hugging Face's Llama layout instead (Qwen3's with qk_norm): gptjax/hf_llama.py.

gptjax's parameters are GPT-2's, one to one, so imported models give HF's logits, and keep GPT-2's
vocabulary unpadded (50257) so that nothing round-trips inexactly. Weights are read and written as
safetensors: torch is only needed to read an old `pytorch_model.bin`. The format itself is
gptjax/hf_gpt2.py, the run directory's checkpoints gptjax/checkpoint.py.
"""

from __future__ import annotations

import os
import shutil

from gptjax import cli
from gptjax.errors import CheckpointError, UserError


def gpt2_preset(shape: tuple) -> str | None:
  """The GPT-2 preset of (n_layer, n_head, n_embd, block_size, vocab_size), if OpenAI's."""
  from gptjax.config import GPT2_BLOCK_SIZE, GPT2_SIZES, GPT2_VOCAB_SIZE
  return {
      (*sizes, GPT2_BLOCK_SIZE, GPT2_VOCAB_SIZE): name for name, sizes in GPT2_SIZES.items()
  }.get(shape)


def import_to_run_dir(hf: str, run_dir: str):
  """Writes an HF GPT-2 checkpoint as step 0 of a new gptjax run directory; returns its config.
  Interrupted or failed, it leaves nothing of the run directory it began."""
  from gptjax import files, hf_gpt2
  checkpoints = os.path.join(run_dir, "checkpoints")
  if os.path.isdir(checkpoints) and os.listdir(checkpoints):
    raise CheckpointError(f"--out {run_dir!r} already holds checkpoints. Fix: choose a new run "
                          f"directory, or delete {checkpoints} if it is not needed.")
  problem = files.unwritable_dir(run_dir)
  if problem:
    raise UserError(f"--out={run_dir!r}: {problem}. Fix: choose a directory you can write, e.g. "
                    f"--out=out/{os.path.basename(os.path.normpath(run_dir)) or 'gpt2'}.")
  hf_dir = hf_gpt2.resolve_hf(hf, flag="--from_hf")
  top = os.path.abspath(checkpoints)  # the outermost directory this import makes
  while not os.path.exists(os.path.dirname(top)):
    top = os.path.dirname(top)
  existed = os.path.exists(top)

  def undo() -> None:  # what this import made: the run directory (and above), or what is in it
    made = [top] if not existed else [os.path.join(top, name) for name in os.listdir(top)]
    for path in made:  # (checkpoints/ existed empty: what is in it now is this import's)
      shutil.rmtree(path, ignore_errors=True)

  with files.undo_on_interrupt(undo):
    try:
      return _write_run_dir(hf, hf_dir, run_dir)
    except BaseException:
      undo()
      raise


def _write_run_dir(hf: str, hf_dir: str, run_dir: str):
  import jax.numpy as jnp
  from gptjax import files, hf_gpt2
  from gptjax.checkpoint import Checkpointer
  from gptjax.config import get_base_config
  from gptjax.optim import make_optimizer
  from gptjax.step import TrainState
  cli.status(f"reading {hf_dir}")
  model, params = hf_gpt2.load_hf_gpt2(hf_dir)
  config = get_base_config()
  config.update(
      dict(name=os.path.basename(os.path.normpath(hf)),
           dropout=0.0,
           description=f"imported from {hf}",
           init_from=hf,
           model_name=os.path.basename(os.path.normpath(run_dir)),
           out_dir=os.path.dirname(os.path.normpath(run_dir)) or "."))
  config.update(model.config.architecture())
  state = TrainState(step=jnp.zeros((), jnp.int32),
                     params=params,
                     opt_state=make_optimizer(config).init(params))
  meta = dict(architecture=model.config.architecture(), config=config.to_dict())
  cli.status(f"writing {run_dir}")
  checkpointer = Checkpointer(run_dir)
  checkpointer.save(0, state, meta)
  checkpointer.close()
  files.write_atomic(os.path.join(run_dir, "config.json"), config.to_json(indent=2))
  return config


def export_run_dir(run_dir: str, hf_dir: str, which: str = "latest") -> str:
  """Writes a run directory's latest (or best) checkpoint as an HF directory: GPT-2's format, or
  for a model beyond GPT-2's options Llama's (Qwen3's with qk_norm); returns the transformers
  class that loads it. A directory it began and did not finish (an error, Ctrl-C) is removed."""
  from gptjax import files, hf_gpt2, hf_llama
  from gptjax.checkpoint import load_run
  cli.status(f"reading {run_dir}")
  model, params, _, _, _ = load_run(run_dir, which)
  llama = bool(model.config.non_gpt2_options())
  if llama:
    hf_llama.check_exportable(model.config)  # before anything is written
  made = not os.path.exists(hf_dir)

  def undo() -> None:
    if made:
      shutil.rmtree(hf_dir, ignore_errors=True)

  with files.undo_on_interrupt(undo):
    try:
      if llama:
        return hf_llama.save_hf_llama(model, params, hf_dir)
      hf_gpt2.save_hf_gpt2(model, params, hf_dir)
      return "GPT2LMHeadModel"
    except BaseException:
      undo()
      raise


def define_flags(values) -> None:
  from absl import flags
  flags.DEFINE_string("from_hf",
                      None,
                      "HF GPT-2 directory (or hub name, e.g. gpt2) to import.",
                      flag_values=values)
  flags.DEFINE_string("out",
                      None,
                      "With --from_hf: the new run directory, e.g. out/gpt2.",
                      flag_values=values)
  flags.DEFINE_string("run_dir",
                      None,
                      "With --to_hf: the run directory to export.",
                      flag_values=values)
  flags.DEFINE_string(
      "to_hf",
      None, "With --run_dir: the HF directory to write (GPT-2's format; Llama's for a model "
      "trained with rope, rmsnorm and swiglu).",
      flag_values=values)
  flags.DEFINE_enum("checkpoint",
                    "latest", ["latest", "best"],
                    "With --run_dir: which checkpoint.",
                    flag_values=values)


def main(f) -> None:
  if f.from_hf and f.out and not (f.run_dir or f.to_hf):
    config = import_to_run_dir(f.from_hf, f.out)
    shape = (config.n_layer, config.n_head, config.n_embd, config.block_size, config.vocab_size)
    preset = gpt2_preset(shape) or ("<a preset with n_layer, n_head, n_embd, block_size, "
                                    f"vocab_size = {shape} and bias=True>")
    print(f"wrote {f.out} (step 0). Sample: python -m gptjax.sample --run_dir {f.out}\n"
          f"Train on: python -m gptjax.train --config={preset} --config.out_dir={config.out_dir} "
          f"--config.model_name={config.model_name}")
  elif f.run_dir and f.to_hf and not (f.from_hf or f.out):
    loader = export_run_dir(f.run_dir, f.to_hf, f.checkpoint)
    print(f"wrote {f.to_hf}: transformers.{loader}.from_pretrained({f.to_hf!r}) loads it")
  else:
    raise UserError("give either --from_hf DIR --out RUN_DIR (import) or --run_dir RUN_DIR "
                    "--to_hf DIR (export).")


def cli_main(argv: list[str] | None = None) -> None:
  """`python -m gptjax.convert` and the gptjax-convert console script."""
  cli.run_command(main, define_flags, __doc__, argv=argv)


if __name__ == "__main__":
  cli_main()
