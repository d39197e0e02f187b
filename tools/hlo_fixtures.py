"""Writes the compiled programs that tests/test_pricing.py prices, compiled without a TPU or GPU.

  python tools/hlo_fixtures.py            # all of them (a few minutes on 2 cores)
  python tools/hlo_fixtures.py splash     # those whose name starts with one of the arguments

Each fixture is tests/data/hlo/<name>.json.gz: the target, the optimised HLO text (without
op metadata), XLA's cost analysis and the program's analytic FLOPs. The programs are small
stand-ins for what the planner prices in gptjax's step: L identical layers under a scan (and
unrolled, and one layer alone), a chunked cross-entropy as a scan over chunks (and the same
chunks as straight-line code), a causal attention step through Pallas's splash kernel, a matmul
as cuBLAS calls it, rows written into a buffer by a loop. Saved, the tests run in milliseconds and
on machines without libtpu or jax's CUDA plugin; the cuDNN attention call, which compiles only
beside a GPU, is written by hand in tests/test_pricing.py.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import os
import re
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO_ROOT, "tests", "data", "hlo")
LAYERS, TOKENS, WIDTH = 4, 512, 256  # the layer programs: an MLP block, 4x hidden, bfloat16
# The same at a real model's size (350M_1024's width, 8 sequences of 1024), where kernels, not
# launches, take the time.
WIDE_TOKENS, WIDE_WIDTH = 8192, 1024
CE_TOKENS, CE_WIDTH, VOCAB, CHUNK = 2048, 128, 4096, 512  # the chunked loss: 4 chunks
ATTENTION = dict(batch=2, heads=2, length=256, head_dim=64)  # splash: 2 x 2 query tiles of 128
ROWS, ROW_WIDTH, STEPS = 256, 256, 24  # the loop writing rows


def programs():
  """name -> (target, function, abstract arguments, compiler options, analytic FLOPs)."""
  import jax
  import jax.numpy as jnp
  bf16 = jnp.bfloat16
  found = {}
  for target in ("tpu-v5e-1", "gpu-h100-80gb"):
    short = target.split("-")[1]
    for prefix, tokens, width in (("layers", TOKENS, WIDTH), ("wide_layers", WIDE_TOKENS,
                                                              WIDE_WIDTH)):
      x = jax.ShapeDtypeStruct((tokens, width), bf16)
      stacked = lambda n, width=width: (
          jax.ShapeDtypeStruct((n, width, 4 * width), bf16),  # noqa: E731
          jax.ShapeDtypeStruct((n, 4 * width, width), bf16))
      layer_flops = 3 * 2 * (2 * tokens * width * 4 * width)  # two matmuls, forward and backward
      variants = [("scan", _layers_scan, LAYERS), ("unrolled", _layers_unrolled, LAYERS),
                  ("one", _layers_unrolled, 1)]
      if prefix == "wide_layers":  # the same scan at 2 and 8 layers: the cost per layer
        variants += [("scan2", _layers_scan, 2), ("scan8", _layers_scan, 8)]
      for name, fn, n in variants:
        found[f"{prefix}_{name}.{short}"] = (target, jax.grad(fn, argnums=(0, 1, 2)),
                                             (x, *stacked(n)), {}, n * layer_flops)
    ce = (jax.ShapeDtypeStruct(
        (CE_TOKENS, CE_WIDTH), bf16), jax.ShapeDtypeStruct(
            (VOCAB, CE_WIDTH), bf16), jax.ShapeDtypeStruct((CE_TOKENS,), jnp.int32))
    for name, unroll in (("scan", False), ("unrolled", True)):
      loss = functools.partial(chunked_cross_entropy, chunk=CHUNK, unroll=unroll)
      found[f"chunked_loss_{name}.{short}"] = (target, jax.value_and_grad(loss, argnums=(0, 1)), ce,
                                               {}, 8 * CE_TOKENS * VOCAB * CE_WIDTH)
    rows = (jax.ShapeDtypeStruct((ROWS, ROW_WIDTH),
                                 bf16), jax.ShapeDtypeStruct((STEPS, ROWS, ROW_WIDTH), bf16))
    found[f"rows_loop.{short}"] = (target, _rows_loop, rows, {}, 0)
  a = ATTENTION
  width = a["heads"] * a["head_dim"]
  tokens = a["batch"] * a["length"]
  found["splash_step.v5e"] = ("tpu-v5e-1", jax.grad(_splash_step, argnums=(1, 2)),
                              (jax.ShapeDtypeStruct((a["batch"], a["length"], width), bf16),
                               jax.ShapeDtypeStruct((width, 3 * width),
                                                    bf16), jax.ShapeDtypeStruct((width, width),
                                                                                bf16)), {},
                              18 * tokens * width * width)  # (2 + 2) x 3C^2 + 6 x C^2: no dx
  gemm = (jax.ShapeDtypeStruct((512, 1024), bf16), jax.ShapeDtypeStruct(
      (1024, 768), bf16), jax.ShapeDtypeStruct((4, 128, 64),
                                               bf16), jax.ShapeDtypeStruct((4, 64, 256), bf16))
  found["gemm_cublas.h100"] = ("gpu-h100-80gb", lambda a, b, c, d: (a @ b, c @ d), gemm, {
      "xla_gpu_enable_triton_gemm": False
  }, 2 * 512 * 1024 * 768 + 2 * 4 * 128 * 64 * 256)
  return found


def _layer(x, weights):
  import jax
  w1, w2 = weights
  return x + jax.nn.gelu(x @ w1) @ w2


def _layers_scan(x, w1, w2):
  import jax
  import jax.numpy as jnp
  y, _ = jax.lax.scan(lambda h, w: (_layer(h, w), None), x, (w1, w2))
  return jnp.sum(y.astype(jnp.float32)**2)


def _layers_unrolled(x, w1, w2):
  import jax.numpy as jnp
  for i in range(w1.shape[0]):
    x = _layer(x, (w1[i], w2[i]))
  return jnp.sum(x.astype(jnp.float32)**2)


def chunked_cross_entropy(x, w, labels, chunk: int, unroll: bool = False):
  """Mean cross-entropy of x @ w.T against labels, `chunk` tokens at a time (a custom_vjp over a
  scan; unroll: the same chunks as straight-line code, the recompute behind a barrier)."""
  import jax
  import jax.numpy as jnp

  def scan(body, carry, xs):
    if not unroll:
      return jax.lax.scan(body, carry, xs)
    outs = []
    for i in range(xs[0].shape[0]):
      carry, out = body(carry, [a[i] for a in xs])
      outs.append(out)
    return carry, jnp.stack(outs)

  chunks = lambda a: a.reshape(a.shape[0] // chunk, chunk, *a.shape[1:])  # noqa: E731
  logits = lambda xc, w: jax.lax.dot_general(  # noqa: E731
      xc, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)

  def forward(x, w, labels):

    def body(total, xs):
      xc, lc = xs
      z = logits(xc, w)
      lse = jax.nn.logsumexp(z, axis=-1)
      return total + jnp.sum(lse - jnp.take_along_axis(z, lc[:, None], axis=-1)[:, 0]), lse

    total, lse = scan(body, jnp.zeros((), jnp.float32), [chunks(x), chunks(labels)])
    return total, (x, w, labels, lse.reshape(-1))

  def backward(residuals, g):
    x, w, labels, lse = residuals

    def body(dw, xs):
      xc, lc, lse_c = xs
      wc = w
      if unroll:  # else XLA reuses the forward's logits
        xc, wc = jax.lax.optimization_barrier((xc, w))
      p = jnp.exp(logits(xc, wc) - lse_c[:, None]) - jax.nn.one_hot(lc, w.shape[0])
      p = p * g
      dx = jax.lax.dot_general(p.astype(w.dtype), wc, (((1,), (0,)), ((), ())))
      return dw + jax.lax.dot_general(
          p.astype(xc.dtype), xc, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32), dx

    dw, dx = scan(body, jnp.zeros(w.shape, jnp.float32), [chunks(x), chunks(labels), chunks(lse)])
    return dx.reshape(x.shape), dw.astype(w.dtype), None

  loss = jax.custom_vjp(lambda x, w, labels: forward(x, w, labels)[0])
  loss.defvjp(forward, backward)
  return loss(x, w, labels) / x.shape[0]


def _rows_loop(x, buffer):
  import jax
  import jax.numpy as jnp

  def body(i, carry):
    x, buffer = carry
    x = jnp.tanh(x)
    return x, jax.lax.dynamic_update_slice(buffer, x[None], (i, 0, 0))

  return jax.lax.fori_loop(0, STEPS, body, (x, buffer))


def _splash_step(x, w_qkv, w_out):
  """One causal attention layer through splash (gptjax's (B, T, H, D) layout), then a loop over
  its output: the loop comes after the Pallas call in the same computation."""
  import jax
  import jax.numpy as jnp
  from jax.experimental.pallas.ops.tpu import splash_attention as splash
  a = ATTENTION
  B, T, H, D = a["batch"], a["length"], a["heads"], a["head_dim"]
  with jax.ensure_compile_time_eval():
    kernel = splash.make_splash_mha(splash.MultiHeadMask([splash.CausalMask((T, T))] * H),
                                    block_sizes=splash.BlockSizes.get_default(),
                                    head_shards=1,
                                    q_seq_shards=1)
  qkv = (x.reshape(B * T, H * D) @ w_qkv).reshape(B, T, 3, H, D)
  q, k, v = (jnp.swapaxes(qkv[:, :, i], 1, 2) for i in range(3))
  y = jax.vmap(kernel)(q / math.sqrt(D), k, v)
  y = jnp.swapaxes(y, 1, 2).reshape(B * T, H * D) @ w_out
  return jax.lax.fori_loop(0, 3, lambda i, total: total + jnp.sum(jnp.tanh(y * i)), 0.0)


def compile_fixture(name: str, target_name: str, fn, args, options: dict, flops: float) -> dict:
  import jax
  import numpy as np
  from gptjax.planner import compiled, targets
  device = targets.devices(targets.parse_target(target_name))[0]
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array([device]), ("d",)),
                                        jax.sharding.PartitionSpec())
  args = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding) for a in args]
  program = jax.jit(fn).lower(*args).compile(compiler_options=options)
  memory = program.memory_analysis()
  return dict(name=name,
              target=target_name,
              hlo=re.sub(r", metadata=\{[^{}]*\}", "", program.as_text()),
              cost=compiled._cost(program),
              memory=dict(argument=memory.argument_size_in_bytes,
                          output=memory.output_size_in_bytes,
                          alias=memory.alias_size_in_bytes,
                          temp=memory.temp_size_in_bytes,
                          code=memory.generated_code_size_in_bytes),
              analytic_flops=flops,
              jax=jax.__version__)


def main(argv: list[str]) -> None:
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, REPO_ROOT)
  os.makedirs(OUT_DIR, exist_ok=True)
  for name, spec in programs().items():
    if argv and not name.startswith(tuple(argv)):
      continue
    fixture = compile_fixture(name, *spec)
    with gzip.open(os.path.join(OUT_DIR, name + ".json.gz"), "wt") as f:
      json.dump(fixture, f)
    print(f"{name}: {len(fixture['hlo']) / 1e3:.0f} kB of HLO, XLA flops "
          f"{fixture['cost'].get('flops', 0) / 1e9:.3f} G, analytic {spec[-1] / 1e9:.3f} G")


if __name__ == "__main__":
  main(sys.argv[1:])
