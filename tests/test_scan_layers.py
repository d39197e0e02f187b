"""scan_layers, a layout: scanned runs train to the unrolled losses, checkpoints resume across the
layout both ways, and the readers of a run (the sampler) see unrolled parameters."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from gptjax import checkpoint, generate
from gptjax.model import GPT
from gptjax.params import to_layout
from gptjax.training.loop import train

from conftest import read_metrics, run_command

STEPS = dict(max_iters=6, lr_decay_iters=6, eval_interval=3, dropout=0.0)


def losses(config, key="train_loss"):
  return [r.get(key, 0.0) for r in read_metrics(os.path.join(config.out_dir, config.model_name))]


def test_runs_resume_across_the_layout_with_the_losses_of_a_straight_run(tiny, capsys):
  """Unrolled 6 steps straight; scanned 3 steps then resumed unrolled; unrolled 3 then resumed
  scanned. The scanned steps equal the unrolled ones (float32, 1e-5), and each resume restores in
  the saved layout and restacks (or unstacks) the parameters and AdamW's moments: the next losses
  are the straight run's."""
  straight = tiny(model_name="straight", **STEPS)
  train(straight)
  for first, then in ((True, False), (False, True)):
    run = tiny(model_name=f"scan_{first}_then_{then}",
               scan_layers=first,
               **{
                   **STEPS, "max_iters": 3
               })
    train(run)
    if first:
      np.testing.assert_allclose(losses(run), losses(straight)[:3], rtol=0, atol=1e-5)
    capsys.readouterr()
    run.scan_layers, run.max_iters = then, 6
    train(run)
    assert "resuming from step 3" in capsys.readouterr().out
    for key in ("train_loss", "val_loss", "grad_norm"):
      np.testing.assert_allclose(losses(run, key),
                                 losses(straight, key),
                                 rtol=0,
                                 atol=1e-5,
                                 err_msg=f"{first} -> {then}: {key}")


def test_sampling_from_a_scanned_run(tiny):
  """load_run unstacks a scanned run's parameters for the KV-cache sampler; generate() unstacks a
  scanned model's itself; the command samples from the run."""
  config = tiny(model_name="scanned", scan_layers=True, remat="full", max_iters=2)
  train(config)
  run_dir = os.path.join(config.out_dir, config.model_name)
  model, params, saved, step, _ = checkpoint.load_run(run_dir)
  assert step == 2 and saved.scan_layers and not model.config.scan_layers
  assert "h_0" in params and "h_1" in params and "h" not in params
  scanned = GPT(dataclasses.replace(model.config, scan_layers=True))
  draw = lambda model, params: generate.generate(model, params, [10, 20, 30], 12, temperature=0.0)
  np.testing.assert_array_equal(draw(scanned, to_layout(params, scan_layers=True)),
                                draw(model, params))
  result = run_command("gptjax.sample", f"--run_dir={run_dir}", "--max_new_tokens=8")
  assert result.returncode == 0, result.stderr[-3000:]


def test_a_run_saved_with_the_old_preset_settings_resumes_with_the_new_ones(tiny, capsys):
  """The *_1024 presets' change (remat true -> a policy name, dropout 0.2 -> 0): a run saved
  with `remat: true` (as config.json holds it from before) and dropout resumes with the new
  settings given on purpose (resume_with_changes: dropout shapes training), which a note names;
  remat, an operational field, changes freely."""
  old = tiny(model_name="old", remat=True, dropout=0.2, max_iters=3, eval_interval=3)
  train(old)
  run_dir = os.path.join(old.out_dir, old.model_name)
  with open(os.path.join(run_dir, "config.json")) as f:
    assert json.load(f)["remat"] is True  # as runs from before saved it
  assert checkpoint.load_run(run_dir)[2].remat == "full"
  capsys.readouterr()
  new = tiny(model_name="old",
             remat="dots_no_batch+attn_out",
             dropout=0.0,
             max_iters=4,
             resume_with_changes=True)
  train(new)
  out = capsys.readouterr()
  assert "resuming from step 3" in out.out
  note = [line for line in out.err.splitlines() if "new settings, on purpose" in line]
  assert len(note) == 1 and "dropout: 0.2 -> 0.0" in note[0] and "remat" not in note[0], out.err
  assert len(losses(new)) == 4


def test_the_new_options_compose_with_gradient_accumulation(tiny):
  """Micro-batches (grad_accum_steps) with scanned layers, a remat policy and the chunked loss
  (a chunk that does not divide a micro-batch's 2 x 16 tokens): the plain run's losses (float32)."""
  accumulate = dict(batch_size=2, grad_accum_steps=2, max_iters=4, eval_interval=4)
  plain = tiny(model_name="plain", **accumulate)
  train(plain)
  tuned = tiny(model_name="tuned",
               scan_layers=True,
               remat="dots_no_batch",
               loss_chunk_tokens=12,
               **accumulate)
  train(tuned)
  for key in ("train_loss", "val_loss", "grad_norm"):
    np.testing.assert_allclose(losses(tuned, key),
                               losses(plain, key),
                               rtol=0,
                               atol=1e-5,
                               err_msg=key)


def test_muon_orthogonalises_scanned_layers_apart(tiny):
  """optimizer=muon with scan_layers: Muon takes the stacked 'layers' axis (nn.scan's
  metadata_params) as separate matrices, so the scanned run's steps equal the unrolled run's; a
  resume across the layout restacks Muon's momentum and AdamW's moments alike."""
  muon = dict(STEPS, optimizer="muon")
  unrolled = tiny(model_name="unrolled", **muon)
  train(unrolled)
  scanned = tiny(model_name="scanned", scan_layers=True, **{**muon, "max_iters": 3})
  train(scanned)
  scanned.scan_layers, scanned.max_iters = False, 6
  train(scanned)
  for key in ("train_loss", "val_loss", "grad_norm"):
    np.testing.assert_allclose(losses(scanned, key),
                               losses(unrolled, key),
                               rtol=0,
                               atol=1e-5,
                               err_msg=key)
