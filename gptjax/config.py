"""Configuration: the base ConfigDict with a comment on every field, validation, ModelConfig.

Every preset (gptjax/configs/, loaded by gptjax/presets.py) is a `get_config()` that starts from
`get_base_config()` (the GPT-2 ones from `presets.gpt2_finetune_config`) and overrides a few
fields. The comment above each field is its documentation (`field_comments()`, for `--help`).
`validate(config)` runs before anything is compiled and raises `ConfigError` naming field, value
and fix. `ModelConfig` (gptjax/model_config.py, with the architecture options and the rules of the
model's options; its names are importable from here too) is the frozen, hashable architecture.
"""

from __future__ import annotations

import ast
import inspect
import math
import os
import textwrap

import ml_collections

from gptjax.errors import ConfigError
from gptjax.model_config import (  # noqa: F401 (ModelConfig and its names are config's too)
    ARCHITECTURE_FIELDS, ARCHITECTURE_OPTIONS, ATTENTION_IMPLEMENTATIONS, PALLAS_ATTENTION,
    PALLAS_BLOCK, REMAT_POLICIES, ModelConfig, add_architecture_options, normalize, remat_name,
    resolve_dropout_rng, validate_model_options)

GPT2_VOCAB_SIZE = 50257  # tiktoken "gpt2": 50,256 merges + <|endoftext|>
GPT2_PADDED_VOCAB_SIZE = 50304  # next multiple of 64, as nanoGPT pads it for fast matmuls
BYTE_VOCAB_SIZE = 256
TOKENIZER_VOCAB_SIZES = {"bytes": BYTE_VOCAB_SIZE, "gpt2": GPT2_VOCAB_SIZE}
DTYPES = ("float32", "bfloat16", "float16")
DROPOUT_RNGS = ("auto", "threefry2x32", "rbg")
OPTIMIZERS = ("adamw", "muon")
LR_SCHEDULES = ("cosine", "linear", "constant", "wsd", "inverse_sqrt")
# The fields a resumed run may change freely: how long, where, on which devices and how often it
# logs, evaluates and saves (and the tokenizer's fields, which data.json checks). Every other field
# shapes training: a run directory refuses a change to it (training.run) unless resume_with_changes
# is set, so that a field added later is protected until it is listed here.
OPERATIONAL_FIELDS = ("name", "description", "max_iters", "eval_interval", "eval_iters",
                      "log_interval", "checkpoint_interval", "keep_checkpoints", "model_name",
                      "out_dir", "compilation_cache_dir", "cpu_devices", "allow_cpu", "mesh",
                      "distributed", "remat", "attention", "loss_chunk_tokens", "scan_layers",
                      "tokenizer", "tokenizer_path", "resume_with_changes", "checkpoint_minutes",
                      "profile_steps", "wandb_project", "wandb_entity", "wandb_run_name",
                      "wandb_tags")
# OpenAI's GPT-2 sizes by Hugging Face model name: (n_layer, n_head, n_embd), each with a context of
# GPT2_BLOCK_SIZE, GPT-2's vocabulary and biases, and a preset configs/<name>.py.
GPT2_SIZES = {
    "gpt2": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280),
    "gpt2-xl": (48, 25, 1600)
}
GPT2_BLOCK_SIZE = 1024


def get_base_config() -> ml_collections.ConfigDict:
  """The base config: every field with its default. Presets override what differs."""
  config = ml_collections.ConfigDict()

  # --- Identity -----------------------------------------------------------------------------------
  # Display name of the architecture (shown by python -m gptjax.show_configs).
  config.name = "GPT-Small"
  # One line on what the preset is for.
  config.description = "6-layer GPT with GPT-2 BPE: the default for experiments"

  # --- Architecture (nanoGPT / GPT-2: learned positions, pre-LayerNorm, 4x GELU MLP, tied head) ---
  # Number of transformer blocks.
  config.n_layer = 6
  # Attention heads per block; must divide n_embd.
  config.n_head = 6
  # Width of the residual stream (C).
  config.n_embd = 384
  # Context length in tokens (T); also the size of the position-embedding table.
  config.block_size = 256
  # Embedding rows. GPT-2 BPE needs >= 50257 (50304 = padded to a multiple of 64); bytes need >= 256.
  config.vocab_size = GPT2_PADDED_VOCAB_SIZE
  # Dropout on embeddings, attention weights and residual branches; 0 disables it. The fused
  # attention kernels (cudnn, splash, flash) have no attention-weight dropout: with them it applies
  # to the embeddings and residual branches only.
  config.dropout = 0.2
  # Biases in the dense layers and LayerNorms (GPT-2 has them; nanoGPT's default does not).
  config.bias = False
  add_architecture_options(config)  # positions, norm, mlp, ... (gptjax/model_config.py)

  # --- Batch ----------------------------------------------------------------------------------------
  # Sequences per micro-batch, global over all devices. One step sees batch_size * grad_accum_steps.
  config.batch_size = 32
  # Micro-batches whose gradients are averaged into one update.
  config.grad_accum_steps = 1

  # --- Optimisation (AdamW, linear warmup then cosine decay to min_lr: nanoGPT's) -------------------
  # "adamw" (nanoGPT's, for every parameter) or "muon": optax's Muon for the hidden weight matrices
  # (attention and MLP kernels), AdamW as below for embeddings, norms and biases
  # (python -m gptjax.show_configs --config=NAME --config.optimizer=muon shows which).
  config.optimizer = "adamw"
  # Muon's peak learning rate; its schedule has the shape of learning_rate's (min_lr scaled alike).
  config.muon_learning_rate = 0.02
  # Muon's (Nesterov) momentum.
  config.muon_momentum = 0.95
  # Muon's decoupled weight decay (optax multiplies it by Muon's learning rate).
  config.muon_weight_decay = 0.0
  # The learning rate after warmup_iters of linear warmup: "cosine" (nanoGPT's: down to min_lr at
  # lr_decay_iters), "linear" (straight down to min_lr at lr_decay_iters), "constant", "wsd"
  # (warmup-stable-decay: constant, then straight down to min_lr over the last lr_decay_fraction
  # of lr_decay_iters) or "inverse_sqrt" (learning_rate * sqrt(warmup_iters / step), >= min_lr).
  config.lr_schedule = "cosine"
  # wsd only: the fraction of lr_decay_iters spent decaying at the end.
  config.lr_decay_fraction = 0.2
  # Number of optimizer updates to run.
  config.max_iters = 5000
  # Peak learning rate, reached after warmup_iters.
  config.learning_rate = 6e-4
  # Floor of the cosine decay.
  config.min_lr = 6e-5
  # Steps of linear warmup from 0 to learning_rate.
  config.warmup_iters = 100
  # Steps over which the rate decays to min_lr; -1 means max_iters.
  config.lr_decay_iters = -1
  # AdamW decoupled weight decay, applied to kernels and embeddings only (not biases or norms).
  config.weight_decay = 0.1
  # AdamW first-moment decay.
  config.beta1 = 0.9
  # AdamW second-moment decay (nanoGPT uses 0.99 for small char models, 0.95 for GPT-2).
  config.beta2 = 0.95
  # Clip the global gradient norm to this value; 0 disables clipping.
  config.grad_clip = 1.0
  # Compute dtype of activations and matmuls; params and optimizer state stay float32.
  config.dtype = "float32"
  # Recompute activations in the backward pass (saves memory, costs compute): "none"; "full" (keep
  # each block's input only); "dots" (every matmul output); "dots_no_batch" (the weight matmuls');
  # "save_attn_out" (the attention output); "dots_no_batch+attn_out" (both); "auto" (the first of
  # none, dots_no_batch, full whose compiled step leaves 10% of a device free, decided for the
  # devices at hand). True/False (older presets, runs' config.json) read as "full"/"none".
  config.remat = ml_collections.FieldReference("none", field_type=object)  # bools load: normalize

  # Attention kernel: "xla" (einsum + causal mask: fastest on CPU), "cudnn" (cuDNN's fused
  # kernel, NVIDIA GPUs, bfloat16/float16), "splash" or "flash" (Pallas TPU kernels; block_size a
  # multiple of 128; on a CPU they run in Pallas' interpret mode, slowly: for tests), or "auto"
  # (cudnn on GPUs in 16 bits, splash on TPUs, xla elsewhere), decided for the devices the step is
  # compiled for. Fused kernels drop no attention weights (see dropout).
  config.attention = "auto"
  # The loss over chunks of this many tokens (a scan with its own gradient through the tied head),
  # never holding the (tokens, vocab) float32 logits: saves memory, costs one more head matmul.
  # 0 computes the logits of the whole batch at once.
  config.loss_chunk_tokens = 0
  # Run the blocks as one nn.scan over a single block, parameters stacked on a leading "layers"
  # axis: compiles several times faster for deep models. A layout, not an architecture: checkpoints
  # restore across it. Scanned runs draw other dropout masks than unrolled ones.
  config.scan_layers = False
  # Random bits for dropout: "threefry2x32" (JAX's default: the same masks on every machine and
  # mesh), "rbg" (XLA's RngBitGenerator: faster on TPU, and there the only one with which remat
  # saves memory when dropout is on), or "auto" (rbg on TPU, threefry2x32 elsewhere).
  config.dropout_rng = "auto"

  # Skip (and log) updates with NaN/inf gradients, params and optimizer state kept; stop when this
  # many in a row were skipped. 0 stops at the first non-finite loss, as nanoGPT does.
  config.skip_nonfinite_updates = 0
  # PaLM's z-loss: z_loss * mean(logsumexp(logits)^2) added to the objective (PaLM: 1e-4); 0 is off.
  config.z_loss = 0.0
  # --- Evaluation and logging -----------------------------------------------------------------------
  # Evaluate train and val loss every this many steps (and at the last step).
  config.eval_interval = 250
  # Batches averaged per evaluation; 0: the whole val split, each token once (exact; no train est.)
  config.eval_iters = 100
  # Print and record metrics every this many steps.
  config.log_interval = 10
  # Save a checkpoint every this many steps (and at the end); 0 means only at eval steps and the end.
  config.checkpoint_interval = 0
  # Keep this many most recent checkpoints (the best by val loss is kept as well).
  config.keep_checkpoints = 3
  # Also save once this many minutes passed since the last checkpoint; 0: by steps only.
  config.checkpoint_minutes = 0.0
  # jax.profiler trace of steps A:B (e.g. "10:12") into <run dir>/profile/; "" traces nothing.
  config.profile_steps = ""
  # Weights & Biases project that process 0 logs the records to (pip install wandb).
  config.wandb_project = ""
  # W&B entity (user or team); "" is the account's default.
  config.wandb_entity = ""
  # W&B run name; "" is the run directory's name.
  config.wandb_run_name = ""
  # Comma-separated W&B tags, e.g. "baseline,shakespeare".
  config.wandb_tags = ""
  # Seed for parameter init, dropout and batch sampling.
  config.seed = 1337

  # --- Data and run directory -----------------------------------------------------------------------
  # A directory of token shards from `python -m gptjax.prepare` (or nanoGPT's train.bin/val.bin),
  # read through np.memmap: corpora larger than memory. "" trains on input_file instead.
  config.data_dir = ""
  # UTF-8 text to train on; "" trains on the embedded default corpus. Tokenized once into
  # <out_dir>/token_cache/ by gptjax.prepare's code, with its validation rule (1 - train_split).
  config.input_file = ""
  # "auto" (with data_dir: the data's own; else bytes when vocab_size < 50257, else gpt2),
  # "bytes", "gpt2", or the path of a Hugging Face tokenizer.json.
  config.tokenizer = "auto"
  # Local GPT-2 ranks file (gpt2.tiktoken) for offline use; "" tries $GPTJAX_GPT2_TIKTOKEN, then tiktoken.
  config.tokenizer_path = ""
  # Training's share of input_file: one document (a text file) gives its last 1 - train_split,
  # cut after a line, to validation; a .jsonl file of many documents gives whole documents, at
  # least 1 - train_split of its text (at most about 10M tokens), as gptjax.prepare does.
  config.train_split = 0.9
  # The run lives in <out_dir>/<model_name>/; "" uses the preset's file name.
  config.model_name = ""
  # Parent directory of all runs.
  config.out_dir = "out"
  # Fine-tune from Hugging Face GPT-2: a local directory or a hub name (gpt2, gpt2-medium, ...); ""
  # trains from scratch. The architecture fields come from the checkpoint (gptjax/hf_gpt2.py),
  # except a smaller block_size, to which its position table is cropped (as nanoGPT does).
  config.init_from = ""
  # Resume a run directory whose checkpoint was trained with other settings that shape training
  # (any field but OPERATIONAL_FIELDS: batch_size, learning_rate, the data, ...), taking the new
  # ones on purpose. Without it, that is an error listing the differences.
  config.resume_with_changes = False

  # JAX's persistent compilation cache: compiled programs are kept here, so running the same
  # command again (resuming, another seed) skips compiling. A set $JAX_COMPILATION_CACHE_DIR wins;
  # "" leaves the cache to it (off when unset).
  config.compilation_cache_dir = "~/.cache/gptjax/jax"

  # Split the host CPU into this many XLA devices, so a CPU-only run can use the mesh (data
  # parallelism across cores). 1 = one CPU device. No effect on GPUs and TPUs.
  config.cpu_devices = 1
  # Train on the CPU although this machine has a GPU or TPU that JAX cannot use (a CPU-only jaxlib);
  # without it that is an error naming the install that fixes it. JAX_PLATFORMS=cpu does the same.
  config.allow_cpu = False

  # --- Device mesh (see README "Sharded and multi-host training") ------------------------------------
  config.mesh = ml_collections.ConfigDict()
  # Pure data parallelism: replicas that each hold all the parameters.
  config.mesh.data = 1
  # Fully sharded data parallelism: parameters and optimizer state sharded along `embed`.
  # -1 means "all devices left over".
  config.mesh.fsdp = -1
  # Tensor parallelism: heads, MLP and vocab split across devices.
  config.mesh.tensor = 1

  # --- Multi-process runs (see README); empty on one host. TPU pods and SLURM are auto-detected. ---
  config.distributed = ml_collections.ConfigDict()
  # host:port of process 0's coordinator, e.g. "10.0.0.1:1234"; "" = $JAX_COORDINATOR_ADDRESS.
  config.distributed.coordinator_address = ""
  # Number of processes; 0 = $JAX_NUM_PROCESSES.
  config.distributed.num_processes = 0
  # This process's index; -1 = $JAX_PROCESS_ID.
  config.distributed.process_id = -1
  return config


def field_comments() -> dict[str, str]:
  """The comment above each field of `get_base_config()` (and add_architecture_options') by dotted
  name ("mesh.fsdp"), in source order: --help's text. No section headers or nested ConfigDicts."""
  return _comments(get_base_config)


def _comments(function) -> dict[str, str]:
  source = textwrap.dedent(inspect.getsource(function))
  lines = source.splitlines()
  comments = {}
  for node in ast.parse(source).body[0].body:
    if ast.unparse(node).startswith("add_architecture_options("):
      comments.update(_comments(add_architecture_options))
    if not (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute)):
      continue
    path, target = [], node.targets[0]
    while isinstance(target, ast.Attribute):
      path.insert(0, target.attr)
      target = target.value
    if isinstance(node.value, ast.Call) and ast.unparse(node.value.func).endswith("ConfigDict"):
      continue
    above, index = [], node.lineno - 2  # the line above the assignment, 0-based
    while index >= 0 and lines[index].lstrip().startswith(
        "#") and not lines[index].lstrip().startswith("# ---"):
      above.insert(0, lines[index].strip().lstrip("#").strip())
      index -= 1
    comments[".".join(path)] = " ".join(above)
  return comments


def resolve_tokenizer(config: ml_collections.ConfigDict) -> str:
  """The tokenizer a config uses: "auto" is bytes below GPT-2's vocabulary, else gpt2."""
  if config.tokenizer != "auto":
    return config.tokenizer
  return "bytes" if config.vocab_size < GPT2_VOCAB_SIZE else "gpt2"


def _divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every rule a config must satisfy; raises ConfigError on the first broken one."""

  def fail(field, message, fix):
    raise ConfigError(f"config field {field!r}: {message}. Fix: {fix}.")

  for field, value in config.items():
    if isinstance(value, float) and not math.isfinite(value):
      fail(field, f"{value!r} is not a finite number",
           f"a finite number, e.g. --config.{field}={get_base_config()[field]}")

  positive_ints = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "batch_size",
                   "grad_accum_steps", "max_iters", "eval_interval", "log_interval",
                   "keep_checkpoints", "cpu_devices")
  for field in positive_ints:
    value = config[field]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      fail(field, f"{value!r} must be a positive integer",
           f"an integer >= 1, e.g. --config.{field}={get_base_config()[field]}")
  if isinstance(config.seed,
                bool) or not isinstance(config.seed, int) or not (0 <= config.seed < 2**32):
    fail("seed", f"{config.seed!r} is not an integer in [0, 2**32)", "e.g. --config.seed=1337")
  for field in ("warmup_iters", "checkpoint_interval", "skip_nonfinite_updates", "eval_iters"):
    if config[field] < 0:
      fail(field, f"{config[field]!r} is negative", f"0 or more, e.g. --config.{field}=0")
  if config.n_embd % config.n_head:
    nearest = min(_divisors(config.n_embd), key=lambda d: (abs(d - config.n_head), d))
    fail(
        "n_head", f"n_embd={config.n_embd} is not divisible by n_head={config.n_head}",
        f"a divisor of n_embd {_divisors(config.n_embd)}, e.g. --config.n_head={nearest}, or an "
        f"n_embd that n_head divides, e.g. --config.n_embd="
        f"{-(-config.n_embd // config.n_head) * config.n_head}")
  if not 0.0 <= config.dropout < 1.0:
    fail("dropout", f"{config.dropout!r} is outside [0, 1)",
         "e.g. --config.dropout=0.2 (small data) or --config.dropout=0.0 (large)")
  if config.tokenizer not in ("auto", *TOKENIZER_VOCAB_SIZES) and not (
      config.tokenizer.endswith(".json") and os.path.isfile(config.tokenizer)):
    fail(
        "tokenizer", f"{config.tokenizer!r} is not a tokenizer" +
        (" (no such file)" if config.tokenizer.endswith(".json") else ""),
        "--config.tokenizer=auto (or bytes, gpt2, or the path of a Hugging Face "
        "tokenizer.json)")
  run_dir = os.path.normpath(os.path.join(config.out_dir, config.model_name))
  if config.model_name and (os.path.isabs(config.model_name) or os.path.relpath(
      run_dir, os.path.normpath(config.out_dir)).split(os.sep)[0] in (os.pardir, os.curdir)):
    fail(
        "model_name", f"{config.model_name!r} leaves out_dir {config.out_dir!r} (a run lives in "
        f"<out_dir>/<model_name>/)", "a plain name, e.g. --config.model_name=" +
        (os.path.basename(os.path.normpath(config.model_name)).strip(".") or "my_run"))
  if config.data_dir and config.input_file:
    fail("data_dir", f"{config.data_dir!r} is set, and so is input_file={config.input_file!r}",
         "train on one of them, e.g. --config.input_file= to train on data_dir")
  tokenizer = resolve_tokenizer(config)
  # A tokenizer.json's vocabulary, and data_dir's tokenizer with "auto", are checked with the data.
  if tokenizer in TOKENIZER_VOCAB_SIZES and not (config.data_dir and config.tokenizer == "auto") \
      and config.vocab_size < TOKENIZER_VOCAB_SIZES[tokenizer]:
    fail(
        "vocab_size", f"{config.vocab_size} is smaller than the {tokenizer} tokenizer's "
        f"{TOKENIZER_VOCAB_SIZES[tokenizer]} tokens",
        f"--config.vocab_size=" + (f"{GPT2_PADDED_VOCAB_SIZE} (GPT-2's, padded for speed)"
                                   if tokenizer == "gpt2" else f"{BYTE_VOCAB_SIZE}"))
  if config.learning_rate <= 0:
    fail("learning_rate", f"{config.learning_rate!r} must be positive",
         "e.g. --config.learning_rate=6e-4")
  if not 0 <= config.min_lr <= config.learning_rate:
    fail("min_lr", f"{config.min_lr!r} must be in [0, learning_rate={config.learning_rate}]",
         f"e.g. learning_rate / 10, --config.min_lr={config.learning_rate / 10:.3g}")
  if config.lr_decay_iters != -1 and config.lr_decay_iters <= config.warmup_iters:
    fail(
        "lr_decay_iters", f"{config.lr_decay_iters} must exceed warmup_iters="
        f"{config.warmup_iters} (or be -1 for max_iters)", "--config.lr_decay_iters=-1")
  if config.optimizer not in OPTIMIZERS:
    fail("optimizer", f"{config.optimizer!r} is not an optimizer",
         f"--config.optimizer=adamw (or {', '.join(OPTIMIZERS[1:])})")
  if config.lr_schedule not in LR_SCHEDULES:
    fail("lr_schedule", f"{config.lr_schedule!r} is not a schedule",
         f"--config.lr_schedule=cosine (or {', '.join(LR_SCHEDULES[1:])})")
  if not 0.0 < config.lr_decay_fraction <= 1.0:
    fail("lr_decay_fraction", f"{config.lr_decay_fraction!r} is outside (0, 1]",
         "e.g. --config.lr_decay_fraction=0.2")
  if not config.muon_learning_rate > 0:
    fail("muon_learning_rate", f"{config.muon_learning_rate!r} must be positive",
         "e.g. --config.muon_learning_rate=0.02")
  for field in ("beta1", "beta2", "muon_momentum"):
    if not 0.0 <= config[field] < 1.0:
      fail(field, f"{config[field]!r} is outside [0, 1)",
           f"e.g. --config.{field}={dict(beta1=0.9, beta2=0.95, muon_momentum=0.95)[field]}")
  for field in ("weight_decay", "grad_clip", "muon_weight_decay", "z_loss", "checkpoint_minutes"):
    if config[field] < 0:
      fail(field, f"{config[field]!r} is negative", f"--config.{field}=0 disables it")
  if config.dtype not in DTYPES:
    fail("dtype", f"{config.dtype!r} is not supported",
         f"--config.dtype=float32 (or {', '.join(DTYPES[1:])})")
  validate_model_options(config)
  if config.dropout_rng not in DROPOUT_RNGS:
    fail("dropout_rng", f"{config.dropout_rng!r} is not a random bit generator",
         f"--config.dropout_rng=auto (or {', '.join(DROPOUT_RNGS[1:])})")
  if not 0.0 < config.train_split < 1.0:
    fail("train_split", f"{config.train_split!r} is outside (0, 1)",
         "e.g. --config.train_split=0.9")
  mesh_sizes = [config.mesh.data, config.mesh.fsdp, config.mesh.tensor]
  if sum(size == -1 for size in mesh_sizes) > 1 or any(s == 0 or s < -1 for s in mesh_sizes):
    fail(
        "mesh", f"data={mesh_sizes[0]}, fsdp={mesh_sizes[1]}, tensor={mesh_sizes[2]} is not a mesh",
        "positive sizes, at most one of them -1 (all remaining devices), e.g. "
        "--config.mesh.data=1 --config.mesh.fsdp=-1 --config.mesh.tensor=1")
  if config.mesh.tensor > 0 and config.n_head % config.mesh.tensor:
    fail(
        "mesh.tensor", f"n_head={config.n_head} is not divisible by mesh.tensor="
        f"{config.mesh.tensor}", f"a divisor of n_head, e.g. --config.mesh.tensor="
        f"{max(d for d in _divisors(config.n_head) if d <= config.mesh.tensor)}")
