"""The planner's pricing of compiled programs: every kernel counted, loops times their trips.

Compile-only programs saved by tools/hlo_fixtures.py (tests/data/hlo: the optimised HLO and XLA's
cost analysis of small stand-ins compiled for a TPU v5e and an H100 without either) are priced
as the planner prices gptjax's step (compiled.figures_of): XLA's TPU cost model corrected by the
walk of the program, the GPU per-kernel roofline. Regenerate them with
`python tools/hlo_fixtures.py` after a jax or libtpu upgrade.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import types

import pytest

from conftest import REPO_ROOT
from gptjax.config import ModelConfig
from gptjax.devices import GPUS, TPU_CHIPS
from gptjax.planner import calls, compiled, hlo, kernels, memory_model, roofline
from gptjax.planner.options import StepOptions

FIXTURES = os.path.join(REPO_ROOT, "tests", "data", "hlo")
DEVICES = {
    "v5e": types.SimpleNamespace(device_kind="TPU v5 lite"),
    "h100": types.SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3")
}


def fixture(name: str) -> dict:
  with gzip.open(os.path.join(FIXTURES, name + ".json.gz"), "rt") as f:
    return json.load(f)


class _Saved:
  """A saved compile, as compiled.figures_of reads a compiled program."""

  def __init__(self, saved: dict):
    self.saved = saved

  def as_text(self):
    return self.saved["hlo"]

  def cost_analysis(self):
    return self.saved["cost"]

  def memory_analysis(self):
    m = self.saved["memory"]
    return types.SimpleNamespace(argument_size_in_bytes=m["argument"],
                                 output_size_in_bytes=m["output"],
                                 alias_size_in_bytes=m["alias"],
                                 temp_size_in_bytes=m["temp"],
                                 generated_code_size_in_bytes=m["code"])


def priced(name: str, chip: str) -> compiled.Compiled:
  return compiled.figures_of(_Saved(fixture(f"{name}.{chip}")), DEVICES[chip])


def seconds(figures: compiled.Compiled) -> float:
  return figures.optimal_seconds if figures.kernel_seconds is None else figures.kernel_seconds


@pytest.mark.parametrize("chip", ["v5e", "h100"])
def test_a_scan_over_layers_costs_l_times_one_layer(chip):
  """4 identical layers under a scan: FLOPs are 4 x one layer's (on TPUs XLA counts the loop's
  body once: 1/4). Time is not: the scanned program differs from its unrolled form (stacked
  residuals written and read by dynamic slices, a launch per kernel, no fusion across layers), and
  XLA's TPU cost model prices its loop body inconsistently; the unrolled program, from which the
  planner prices scan_layers on TPUs, is 4 x one layer within 10%."""
  scan, unrolled, one = (priced(f"layers_{name}", chip) for name in ("scan", "unrolled", "one"))
  assert scan.flops == pytest.approx(4 * one.flops, rel=0.05)
  assert scan.flops == pytest.approx(unrolled.flops, rel=0.05)
  assert scan.flops == pytest.approx(fixture(f"layers_scan.{chip}")["analytic_flops"], rel=0.05)
  assert seconds(unrolled) == pytest.approx(4 * seconds(one), rel=0.10)
  assert seconds(scan) > seconds(unrolled)
  walked = kernels.walk(fixture(f"layers_scan.{chip}")["hlo"], kernels.Device(1e12, 1e12, 1e9))
  assert [loop.trips for loop in walked.loops] == [4, 4]  # forward and backward
  if chip == "v5e":  # the undercount the walk corrects: the body once
    assert fixture("layers_scan.v5e")["cost"]["flops"] < 0.3 * scan.flops


@pytest.mark.parametrize("chip", ["v5e", "h100"])
def test_at_a_real_size_each_layer_of_a_scan_costs_the_same(chip):
  """350M_1024's width (1024) at 8 x 1024 tokens, the MLP block scanned over 2, 4 and 8 layers,
  each depth compiled on its own: every layer adds the same FLOPs and the same time (the third to
  eighth layers cost what the third and fourth do, within 5%), so a scan of L layers costs L x one
  of its layers plus the little outside the loop. XLA's TPU cost analysis alone counts the same
  FLOPs at every depth. Against the layer compiled alone, the unrolled program (what the planner
  prices scan_layers from on TPUs) is L x one layer within 5%; the scanned program itself costs
  more (on an H100 1.9x: it saves the GELU's intermediates of every layer in stacked buffers, a
  copy each, and zeroes them first), which the walk prices as the program does it."""
  s2, s4, s8 = (priced(f"wide_layers_{name}", chip) for name in ("scan2", "scan", "scan8"))
  one, unrolled = priced("wide_layers_one", chip), priced("wide_layers_unrolled", chip)
  assert s4.flops == pytest.approx(2 * s2.flops, rel=1e-3)
  assert s8.flops == pytest.approx(4 * s2.flops, rel=1e-3)
  assert s8.flops == pytest.approx(fixture(f"wide_layers_scan8.{chip}")["analytic_flops"], rel=0.01)
  per_layer = (seconds(s4) - seconds(s2)) / 2
  assert (seconds(s8) - seconds(s2)) / 6 == pytest.approx(per_layer, rel=0.05)
  assert seconds(s8) == pytest.approx(4 * seconds(s2), rel=0.10)
  assert seconds(unrolled) == pytest.approx(4 * seconds(one), rel=0.05)
  assert unrolled.flops == pytest.approx(4 * one.flops, rel=0.01)
  if chip == "v5e":
    xla = [fixture(f"wide_layers_{name}.v5e")["cost"]["flops"] for name in ("scan2", "scan8")]
    assert xla[1] == pytest.approx(xla[0], rel=1e-3)  # the loop's body once, at any depth


@pytest.mark.parametrize("chip", ["v5e", "h100"])
def test_a_chunked_loss_costs_the_sum_of_its_chunks(chip):
  """A cross-entropy over 4 chunks as a scan against the same chunks as straight-line code:
  FLOPs to 1% (8NVC: the logits recomputed in the backward), time within 10%."""
  scan, unrolled = priced("chunked_loss_scan", chip), priced("chunked_loss_unrolled", chip)
  assert scan.flops == pytest.approx(unrolled.flops, rel=0.01)
  assert scan.flops == pytest.approx(fixture(f"chunked_loss_scan.{chip}")["analytic_flops"],
                                     rel=0.02)
  assert seconds(scan) == pytest.approx(seconds(unrolled), rel=0.10)


def test_a_splash_attention_steps_flops_equal_the_analytic_count():
  """A causal attention layer through Pallas's splash kernel, compiled for a v5e: XLA's cost
  model sees none of its three kernels; priced from their shapes and tiles (2 x 2 query tiles of
  128 and the 3 computed of 4, 2 + 3 + 4 matmuls each), the step's FLOPs are the analytic count.
  The loop after the kernel in the same computation is walked (a parser that ends a computation
  at the kernel's "}}, metadata=" line drops it)."""
  saved = fixture("splash_step.v5e")
  figures = priced("splash_step", "v5e")
  kernel_flops = calls.causal_attention_flops(2, 2, 256, 256, 64, 2 + 3 + 4)
  assert kernel_flops == 2 * 2 * (3 * 128 * 128) * 2 * 64 * 9
  assert figures.flops == pytest.approx(saved["analytic_flops"] + kernel_flops, rel=0.05)
  assert saved["cost"]["flops"] < 0.5 * figures.flops
  walked = kernels.walk(saved["hlo"], roofline.device_of(TPU_CHIPS["v5e"]))
  assert sorted(kind for kind in walked.by_kind if kind.startswith("pallas")) == [
      "pallas attention dkv", "pallas attention dq", "pallas attention fwd"
  ]
  assert walked.unseen.flops == pytest.approx(kernel_flops)
  assert [loop.trips for loop in walked.loops] == [3, 3]
  assert any("Pallas kernel" in note for note in figures.notes)


def test_a_cublas_gemm_is_priced_at_2mnk():
  """A matmul and a batched matmul as `__cublas$lt$matmul` custom calls (what a real GPU's
  compile emits; deviceless: Triton gemms off): 2 x M x N x K each, the workspace not counted."""
  saved = fixture("gemm_cublas.h100")
  assert saved["hlo"].count('custom_call_target="__cublas$lt$matmul"') == 2
  figures = priced("gemm_cublas", "h100")
  assert figures.flops == saved["analytic_flops"] == 2 * 512 * 1024 * 768 + 2 * 4 * 128 * 64 * 256
  operands = 2 * (512 * 1024 + 1024 * 768 + 4 * 128 * 64 + 4 * 64 * 256)
  outputs = 2 * (512 * 768 + 4 * 128 * 256)
  assert figures.bytes_accessed == operands + outputs


@pytest.mark.parametrize("chip", ["v5e", "h100"])
def test_a_dynamic_update_slice_in_a_loop_is_priced_by_its_update(chip):
  """24 steps each write one (256, 256) row block into a (24, 256, 256) buffer: each moves the
  row (read, written) and its tanh, not the whole buffer (which would be 24x more); outside the
  loop the buffer is copied once (it is not donated)."""
  row = 256 * 256 * 2
  buffer = 24 * row
  walked = kernels.walk(fixture(f"rows_loop.{chip}")["hlo"], kernels.Device(1e12, 1e12, 1e9))
  [loop] = walked.loops
  assert loop.trips == 24
  assert 3 * row <= loop.body.bytes <= 5 * row
  assert walked.total.bytes < 0.4 * 24 * buffer  # charged whole, each step would move > 24x


CUDNN_HLO = """HloModule cudnn_attention

ENTRY %main (q: bf16[4,1024,12,64], k: bf16[4,1024,12,64], v: bf16[4,1024,12,64], do: \
bf16[4,1024,12,64]) -> bf16[4,1024,12,64] {
  %q = bf16[4,1024,12,64]{3,2,1,0} parameter(0)
  %k = bf16[4,1024,12,64]{3,2,1,0} parameter(1)
  %v = bf16[4,1024,12,64]{3,2,1,0} parameter(2)
  %do = bf16[4,1024,12,64]{3,2,1,0} parameter(3)
  %fwd = (bf16[4,1024,12,64]{3,2,1,0}, f32[4,12,1024]{2,1,0}, u8[0]{0}) custom-call(%q, %k, %v), \
custom_call_target="__cudnn$fmhaSoftmax", backend_config={"operation_queue_id":"0",\
"cudnn_fmha_backend_config":{"fmha_scale":0.125,"is_flash_attention":true,"mask_type":"CAUSAL",\
"bmm1_dot_dimension_numbers":{"lhs_contracting_dimensions":["3"],"rhs_contracting_dimensions":\
["3"],"lhs_batch_dimensions":["0","2"],"rhs_batch_dimensions":["0","2"]}}}
  %out = bf16[4,1024,12,64]{3,2,1,0} get-tuple-element(%fwd), index=0
  %stats = f32[4,12,1024]{2,1,0} get-tuple-element(%fwd), index=1
  %bwd = (bf16[4,1024,12,64]{3,2,1,0}, bf16[4,1024,12,64]{3,2,1,0}, bf16[4,1024,12,64]{3,2,1,0}, \
u8[0]{0}) custom-call(%q, %k, %v, %stats, %do, %out), \
custom_call_target="__cudnn$fmhaSoftmaxBackward", backend_config={"operation_queue_id":"0",\
"cudnn_fmha_backend_config":{"fmha_scale":0.125,"is_flash_attention":true,"mask_type":"CAUSAL",\
"bmm1_grad_gemm1_dot_dimension_numbers":{"lhs_contracting_dimensions":["2"],\
"rhs_contracting_dimensions":["1"],"lhs_batch_dimensions":["0","1"],"rhs_batch_dimensions":\
["0","2"]}}}
  ROOT %dq = bf16[4,1024,12,64]{3,2,1,0} get-tuple-element(%bwd), index=0
}
"""


def test_cudnn_fused_attention_is_priced_from_its_shapes():
  """cuDNN's attention compiles only beside a GPU: its custom calls (jax's (B, T, H, D) layout,
  causal mask) are priced as flash attention over the causal tiles, forward 2 matmuls, backward
  5; and where the planner compiled XLA's attention instead, FusedAttention prices the same."""
  walked = kernels.walk(CUDNN_HLO, roofline.device_of(GPUS["h100-80gb"]))
  assert walked.by_kind["cudnn attention"].kernels == 2
  expected = calls.causal_attention_flops(4, 12, 1024, 1024, 64, 2 + 5)
  assert walked.total.flops == pytest.approx(expected)
  assert expected == pytest.approx(4 * 12 * 1024 * 1024 * 2 * 64 * 7 * 36 / 64)
  fused = calls.FusedAttention(4, 12, 1024, 64, 2, forward_passes=1, backward_passes=1)
  assert fused.cost(roofline.device_of(GPUS["h100-80gb"])).flops == pytest.approx(expected)
  assert fused.is_scores((4, 12, 1024, 1024)) and fused.is_scores((48, 1024, 1024))
  assert not fused.is_scores((4, 1024, 1024))  # an activation (B, T, C) with C = T


def test_computations_end_only_at_a_lone_brace_and_instructions_span_lines():
  text = ("HloModule m\n\n%body (p: f32[2]) -> f32[2] {\n  %p = f32[2]{0} parameter(0)\n"
          "  ROOT %k = f32[2]{0} custom-call(%p), custom_call_target=\"tpu_custom_call\", "
          "frontend_attributes={kernel_metadata={\n\"xprof_metadata\":\"{}\"\n}}, "
          "metadata={op_name=\"x\"}\n  %after = f32[2]{0} add(%k, %k)\n}\n\n"
          "ENTRY %main (a: f32[2]) -> f32[2] {\n  %a = f32[2]{0} parameter(0)\n"
          "  ROOT %c = f32[2]{0} call(%a), to_apply=%body\n}\n")
  module = hlo.parse(text)
  assert [i.name for i in module.computations["body"]] == ["p", "k", "after"]
  assert "xprof_metadata" in module.by_name["k"].attrs
  assert module.entry == "main"


def test_full_remat_recomputes_16c2_plus_4tc_per_token_and_layer():
  """The block's forward pass but its last matmul, whose output the backward needs not."""
  config = types.SimpleNamespace(batch_size=8, grad_accum_steps=1, block_size=256)
  model = ModelConfig(vocab_size=1024, block_size=256, n_layer=2, n_head=4, n_embd=256)
  plain = roofline.step_flops(config, model, StepOptions("xla", "none"))
  full = roofline.step_flops(config, model, StepOptions("xla", "full"))
  assert full - plain == 2 * (16 * 256**2 + 4 * 256 * 256) * 8 * 256
  chunked = roofline.step_flops(config, model, StepOptions("xla", "none", loss_chunk_tokens=512))
  assert chunked - plain == 2 * 1024 * 256 * 8 * 256  # the logits again in the backward
  fused = roofline.step_flops(config, model, StepOptions("splash", "none"))
  share = 3 / 4  # causal 128-tiles of a 256 context: 3 of 4
  assert plain - fused == pytest.approx(2 * 8 * 256 * (12 - 18 * share) * 256 * 256)


def test_the_memory_model_knows_the_steps_options():
  model = ModelConfig(vocab_size=50304,
                      block_size=1024,
                      n_layer=24,
                      n_head=16,
                      n_embd=1024,
                      dtype="bfloat16")
  terms = lambda **o: memory_model.activation_terms(  # noqa: E731
      model, StepOptions(**{
          "attention": "xla",
          "remat": "none",
          **o
      }), 12 * 1024)
  assert terms(attention="splash")["scores"] == 12 * 1024 * 16 * 4  # softmax statistics only
  assert terms()["scores"] > 500 * terms(attention="cudnn")["scores"]
  assert terms(loss_chunk_tokens=2048)["logits"] < terms()["logits"] / 4
  kept = [terms(remat=p)["policy_kept"] for p in ("full", "save_attn_out", "dots_no_batch")]
  assert kept == sorted(kept) and kept[0] == 0
  k = memory_model.calibration()["tpu/16bit/remat/no-dropout"]
  policy = memory_model.model_temporary_bytes(terms(remat="dots_no_batch"), 0, 24, True, k)
  assert policy > memory_model.model_temporary_bytes(terms(remat="full"), 0, 24, True, k)
  k = memory_model.calibration()["tpu/16bit/no-remat/no-dropout"]
  scan = memory_model.model_temporary_bytes(terms(), 0, 24, False, k, scan_layers=True)
  assert scan > memory_model.model_temporary_bytes(terms(), 0, 24, False, k)


def test_the_gpu_efficiency_is_calibrated_on_published_runs():
  calibration = roofline.gpu_calibration()
  runs = calibration["runs"]
  assert {run["target"] for run in runs} >= {"gpu-a100-40gb", "gpu-h100-80gb"}
  for run in runs:
    assert run["efficiency"] == pytest.approx(run["roofline_seconds"] / run["measured_seconds"])
    assert 0.2 < run["efficiency"] < 1.0
  mean = sum(run["efficiency"] for run in runs) / len(runs)
  assert roofline.gpu_efficiency() == pytest.approx(mean, abs=1e-3)


@pytest.mark.compile_only
def test_the_planner_prices_fused_attention_and_remat_in_gptjax_step(tiny, tmp_path):
  """gptjax's own step compiled for an H100 without one: XLA's attention is 12LTC a token (the MFU
  count); cuDNN's, priced in place of the compiled XLA attention, its causal tiles; full remat
  adds 16C^2 + 4TC a token and layer."""
  from gptjax.planner import estimate, report, targets
  target = targets.parse_target("gpu-h100-80gb")
  base = dict(n_layer=2,
              n_head=4,
              n_embd=256,
              block_size=256,
              vocab_size=1024,
              batch_size=8,
              dtype="bfloat16",
              dropout=0.0)
  found = {}
  for name, fields in (("xla", dict(attention="xla")), ("cudnn", dict(attention="cudnn")),
                       ("remat", dict(attention="xla", remat=True))):
    found[name] = estimate.estimate(tiny(**base, **fields), target, method="compile")
  xla, cudnn, remat = found["xla"], found["cudnn"], found["remat"]
  assert xla.flops_per_step == pytest.approx(xla.model_flops_per_step, rel=0.01)
  tokens, C, T = 8 * 256, 256, 256
  assert remat.flops_per_step - xla.flops_per_step == pytest.approx(2 * (16 * C * C + 4 * T * C) *
                                                                    tokens,
                                                                    rel=0.02)
  fused = 2 * calls.causal_attention_flops(8, 4, 256, 256, 64, 7)
  assert cudnn.flops_per_step == pytest.approx(xla.flops_per_step - 2 * 12 * T * C * tokens + fused,
                                               rel=0.01)
  assert cudnn.roofline_seconds < xla.roofline_seconds
  assert cudnn.step_seconds == pytest.approx(cudnn.roofline_seconds / roofline.gpu_efficiency())
  text = report.format_estimate(cudnn, tiny(**base))
  assert "step time, expected" in text and "step time, roofline" in text
  assert "a lower bound" in text and "at the roofline (an upper bound)" in text
  assert dataclasses.asdict(cudnn.memory)
