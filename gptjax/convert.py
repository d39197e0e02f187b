"""Hugging Face GPT-2 checkpoints in and out of gptjax run directories, `python -m gptjax.convert`.

  python -m gptjax.convert --from_hf DIR --out out/gpt2        # HF GPT-2 -> a gptjax run directory
  python -m gptjax.convert --run_dir out/gpt2 --to_hf DIR      # a run's checkpoint -> HF GPT-2

gptjax's parameters are GPT-2's, one to one, so imported models give HF's logits, and keep GPT-2's
vocabulary unpadded (50257) so that nothing round-trips inexactly. Weights are read and written as
safetensors: torch is only needed to read an old `pytorch_model.bin`. The format itself is
gptjax/hf_gpt2.py, the run directory's checkpoints gptjax/checkpoint.py.
"""

from __future__ import annotations

import os

from gptjax import cli
from gptjax.config import GPT2_BLOCK_SIZE, GPT2_SIZES, GPT2_VOCAB_SIZE
from gptjax.errors import CheckpointError, UserError

# (n_layer, n_head, n_embd, block_size, vocab_size) of OpenAI's GPT-2 sizes -> their presets.
GPT2_PRESETS = {
    (*sizes, GPT2_BLOCK_SIZE, GPT2_VOCAB_SIZE): name for name, sizes in GPT2_SIZES.items()
}


def import_to_run_dir(hf: str, run_dir: str):
  """Writes an HF GPT-2 checkpoint as step 0 of a new gptjax run directory; returns its config."""
  import jax.numpy as jnp
  from gptjax import files, hf_gpt2
  from gptjax.checkpoint import Checkpointer
  from gptjax.config import get_base_config
  from gptjax.optim import make_optimizer
  from gptjax.step import TrainState
  checkpoints = os.path.join(run_dir, "checkpoints")
  if os.path.isdir(checkpoints) and os.listdir(checkpoints):
    raise CheckpointError(f"--out {run_dir!r} already holds checkpoints. Fix: choose a new run "
                          f"directory, or delete {checkpoints} if it is not needed.")
  hf_dir = hf_gpt2.resolve_hf(hf, flag="--from_hf")
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
  checkpointer = Checkpointer(run_dir)
  checkpointer.save(0, state, meta)
  checkpointer.close()
  files.write_atomic(os.path.join(run_dir, "config.json"), config.to_json(indent=2))
  return config


def export_run_dir(run_dir: str, hf_dir: str, which: str = "latest") -> None:
  """Writes a run directory's latest (or best) checkpoint as an HF GPT-2 directory."""
  from gptjax import hf_gpt2
  from gptjax.checkpoint import load_run
  model, params, _, _, _ = load_run(run_dir, which)
  hf_gpt2.save_hf_gpt2(model, params, hf_dir)


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
  flags.DEFINE_string("to_hf",
                      None,
                      "With --run_dir: the HF directory to write.",
                      flag_values=values)
  flags.DEFINE_enum("checkpoint",
                    "latest", ["latest", "best"],
                    "With --run_dir: which checkpoint.",
                    flag_values=values)


def main(f) -> None:
  if f.from_hf and f.out and not (f.run_dir or f.to_hf):
    config = import_to_run_dir(f.from_hf, f.out)
    shape = (config.n_layer, config.n_head, config.n_embd, config.block_size, config.vocab_size)
    preset = GPT2_PRESETS.get(
        shape, "<a preset with n_layer, n_head, n_embd, block_size, "
        f"vocab_size = {shape} and bias=True>")
    print(f"wrote {f.out} (step 0). Sample: python -m gptjax.sample --run_dir {f.out}\n"
          f"Train on: python -m gptjax.train --config={preset} --config.out_dir={config.out_dir} "
          f"--config.model_name={config.model_name}")
  elif f.run_dir and f.to_hf and not (f.from_hf or f.out):
    export_run_dir(f.run_dir, f.to_hf, f.checkpoint)
    print(f"wrote {f.to_hf}: transformers.GPT2LMHeadModel.from_pretrained({f.to_hf!r}) loads it")
  else:
    raise UserError("give either --from_hf DIR --out RUN_DIR (import) or --run_dir RUN_DIR "
                    "--to_hf DIR (export).")


def cli_main(argv: list[str] | None = None) -> None:
  """`python -m gptjax.convert` and the gptjax-convert console script."""
  cli.run_command(main, define_flags, __doc__, argv=argv)


if __name__ == "__main__":
  cli_main()
