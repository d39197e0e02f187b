"""nanoGPT's model and training loop in PyTorch: the reference tools/bench_nanogpt.py times gptjax
against.

Ported from karpathy/nanoGPT at commit 93a43d9a5c22450bbf06e78da2cb6eeef084b717 (2024-12-09, the
last change to its code; later commits touch only its README):
  model.py                         LayerNorm, CausalSelfAttention, MLP, Block, GPT (init, forward,
                                   configure_optimizers, generate), module for module, so that a
                                   seed draws the same initial weights as nanoGPT
  train.py                         get_batch, estimate_loss, get_lr (warmup from (it + 1) / (warmup
                                   + 1), that commit's fix) and the loop: evaluate every
                                   eval_interval steps, save ckpt.pt when val improves, forward,
                                   fetch the next batch, backward, clip, step, zero_grad
  data/shakespeare_char/prepare.py the character vocabulary (sorted characters of the text) and
                                   the 90/10 split
  config/train_shakespeare_char.py always_save_checkpoint = False, gradient_accumulation_steps = 1

Left out, as nanoGPT's CPU command (README: `--device=cpu --compile=False`) runs without them:
torch.compile, DDP, CUDA autocast and the GradScaler (both no-ops on CPU), wandb, init_from
resume / gpt2, the MFU estimate, and the manual attention for PyTorch < 2.0.
Not nanoGPT's: `seed` (train.py fixes 1337), `vocab="bytes"` (gptjax's UTF-8 byte tokens, so both
engines see the same data), per-step times that leave the evaluations out, and whole_split_loss.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


@dataclasses.dataclass
class GPTConfig:
  block_size: int = 1024
  vocab_size: int = 50304
  n_layer: int = 12
  n_head: int = 12
  n_embd: int = 768
  dropout: float = 0.0
  bias: bool = True


class LayerNorm(nn.Module):
  """LayerNorm with an optional bias."""

  def __init__(self, ndim, bias):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(ndim))
    self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

  def forward(self, input):
    return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):

  def __init__(self, config):
    super().__init__()
    assert config.n_embd % config.n_head == 0
    self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
    self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
    self.attn_dropout = nn.Dropout(config.dropout)
    self.resid_dropout = nn.Dropout(config.dropout)
    self.n_head = config.n_head
    self.n_embd = config.n_embd
    self.dropout = config.dropout

  def forward(self, x):
    B, T, C = x.size()
    q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
    k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
    q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
    v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
    y = F.scaled_dot_product_attention(q,
                                       k,
                                       v,
                                       attn_mask=None,
                                       dropout_p=self.dropout if self.training else 0,
                                       is_causal=True)
    y = y.transpose(1, 2).contiguous().view(B, T, C)
    return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

  def __init__(self, config):
    super().__init__()
    self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
    self.gelu = nn.GELU()
    self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
    self.dropout = nn.Dropout(config.dropout)

  def forward(self, x):
    return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

  def __init__(self, config):
    super().__init__()
    self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
    self.attn = CausalSelfAttention(config)
    self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
    self.mlp = MLP(config)

  def forward(self, x):
    x = x + self.attn(self.ln_1(x))
    return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):

  def __init__(self, config):
    super().__init__()
    self.config = config
    self.transformer = nn.ModuleDict(
        dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
    self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
    self.transformer.wte.weight = self.lm_head.weight  # weight tying
    self.apply(self._init_weights)
    for pn, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
      if pn.endswith("c_proj.weight"):
        torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

  def _init_weights(self, module):
    if isinstance(module, nn.Linear):
      torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
      if module.bias is not None:
        torch.nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
      torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

  def forward(self, idx, targets=None):
    b, t = idx.size()
    assert t <= self.config.block_size
    pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
    x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
    for block in self.transformer.h:
      x = block(x)
    x = self.transformer.ln_f(x)
    if targets is not None:
      logits = self.lm_head(x)
      loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
    else:  # inference: the head on the last position only
      logits, loss = self.lm_head(x[:, [-1], :]), None
    return logits, loss

  @torch.no_grad()
  def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
    """nanoGPT's sampling loop: the whole (cropped) context through the model for every token."""
    for _ in range(max_new_tokens):
      idx_cond = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size:]
      logits, _ = self(idx_cond)
      logits = logits[:, -1, :] / temperature
      if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits[logits < v[:, [-1]]] = -float("Inf")
      probs = F.softmax(logits, dim=-1)
      idx_next = torch.multinomial(probs, num_samples=1)
      idx = torch.cat((idx, idx_next), dim=1)
    return idx

  def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
    """AdamW, decaying the 2-D tensors (matmul weights, embeddings) only; fused on CUDA."""
    param_dict = {pn: p for pn, p in self.named_parameters() if p.requires_grad}
    optim_groups = [
        {
            "params": [p for p in param_dict.values() if p.dim() >= 2],
            "weight_decay": weight_decay
        },
        {
            "params": [p for p in param_dict.values() if p.dim() < 2],
            "weight_decay": 0.0
        },
    ]
    extra_args = dict(fused=True) if device_type == "cuda" else dict()
    return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas, **extra_args)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  """The settings train.py's loop reads, under train.py's names."""
  n_layer: int
  n_head: int
  n_embd: int
  block_size: int
  batch_size: int
  max_iters: int
  lr_decay_iters: int
  learning_rate: float
  min_lr: float
  warmup_iters: int
  beta1: float
  beta2: float
  weight_decay: float
  grad_clip: float
  eval_interval: int
  eval_iters: int
  dropout: float = 0.0
  bias: bool = False
  gradient_accumulation_steps: int = 1
  always_save_checkpoint: bool = False  # config/train_shakespeare_char.py
  log_interval: int = 1  # the README's CPU command


def tokens(text: str, vocab: str = "chars") -> tuple[np.ndarray, int]:
  """(uint16 token ids, vocabulary size) of `text`: prepare.py's characters, or UTF-8 bytes."""
  if vocab == "bytes":
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.uint16), 256
  chars = sorted(set(text))
  stoi = {ch: i for i, ch in enumerate(chars)}
  return np.array([stoi[c] for c in text], dtype=np.uint16), len(chars)


class Trainer:
  """train.py's state and the body of its loop, on `text` split 90/10 as prepare.py splits it."""

  def __init__(self, text: str, settings: TrainSettings, seed: int = 1337, vocab: str = "chars"):
    s = self.settings = settings
    ids, vocab_size = tokens(text, vocab)
    n = int(0.9 * len(ids))
    self.splits = dict(train=ids[:n], val=ids[n:])
    torch.manual_seed(seed)
    self.model_args = dict(n_layer=s.n_layer,
                           n_head=s.n_head,
                           n_embd=s.n_embd,
                           block_size=s.block_size,
                           bias=s.bias,
                           vocab_size=vocab_size,
                           dropout=s.dropout)
    self.model = GPT(GPTConfig(**self.model_args))
    self.optimizer = self.model.configure_optimizers(s.weight_decay, s.learning_rate,
                                                     (s.beta1, s.beta2), "cpu")
    self.X, self.Y = self.get_batch("train")  # fetch the very first batch

  def get_batch(self, split):
    s, data = self.settings, self.splits[split]
    ix = torch.randint(len(data) - s.block_size, (s.batch_size,))
    x = torch.stack([torch.from_numpy((data[i:i + s.block_size]).astype(np.int64)) for i in ix])
    y = torch.stack(
        [torch.from_numpy((data[i + 1:i + 1 + s.block_size]).astype(np.int64)) for i in ix])
    return x, y

  @torch.no_grad()
  def estimate_loss(self) -> dict[str, float]:
    out = {}
    self.model.eval()
    for split in ["train", "val"]:
      losses = torch.zeros(self.settings.eval_iters)
      for k in range(self.settings.eval_iters):
        _, loss = self.model(*self.get_batch(split))
        losses[k] = loss.item()
      out[split] = float(losses.mean())
    self.model.train()
    return out

  def get_lr(self, it):
    s = self.settings
    if it < s.warmup_iters:
      return s.learning_rate * (it + 1) / (s.warmup_iters + 1)
    if it > s.lr_decay_iters:
      return s.min_lr
    decay_ratio = (it - s.warmup_iters) / (s.lr_decay_iters - s.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return s.min_lr + coeff * (s.learning_rate - s.min_lr)

  def step(self, iter_num: int) -> None:
    """One iteration of train.py's loop without its evaluation: lr, forward, backward, update."""
    s = self.settings
    for param_group in self.optimizer.param_groups:
      param_group["lr"] = self.get_lr(iter_num)
    for _ in range(s.gradient_accumulation_steps):
      _, loss = self.model(self.X, self.Y)
      loss = loss / s.gradient_accumulation_steps
      self.X, self.Y = self.get_batch("train")
      loss.backward()
    if s.grad_clip != 0.0:
      torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip)
    self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)
    if iter_num % s.log_interval == 0:  # train.py's log line waits for the loss
      self.last_loss = loss.item() * s.gradient_accumulation_steps

  def save_checkpoint(self, path: str, iter_num: int, best_val_loss: float) -> None:
    torch.save(
        dict(model=self.model.state_dict(),
             optimizer=self.optimizer.state_dict(),
             model_args=self.model_args,
             iter_num=iter_num,
             best_val_loss=best_val_loss,
             config=dataclasses.asdict(self.settings)), path)

  @torch.no_grad()
  def whole_split_loss(self, split: str = "val", batch_size: int = 128) -> float:
    """Not nanoGPT's: the exact mean loss over a whole split, cut into windows of block_size + 1
    overlapping by one token, as gptjax.benchmark.split_loss cuts it."""
    self.model.eval()
    data, T = self.splits[split], self.settings.block_size
    n = (len(data) - 1) // T
    windows = torch.from_numpy(
        np.stack([data[i * T:i * T + T + 1] for i in range(n)]).astype(np.int64))
    total = sum(
        self.model(w[:, :-1], w[:, 1:].contiguous())[1].item() * len(w)
        for w in windows.split(batch_size))
    self.model.train()
    return total / n


def train(trainer: Trainer, out_dir: str) -> dict:
  """train.py's loop from iter 0 to max_iters (it stops once iter_num > max_iters), saving
  <out_dir>/ckpt.pt as it does. Returns every evaluation and the time of each step."""
  s = trainer.settings
  best_val_loss, iter_num, evals, step_seconds = 1e9, 0, [], []
  t0 = time.perf_counter()
  while True:
    if iter_num % s.eval_interval == 0:
      losses = trainer.estimate_loss()
      evals.append(dict(step=iter_num, **losses))
      if losses["val"] < best_val_loss or s.always_save_checkpoint:
        best_val_loss = losses["val"]
        if iter_num > 0:
          trainer.save_checkpoint(os.path.join(out_dir, "ckpt.pt"), iter_num, best_val_loss)
      t0 = time.perf_counter()  # not nanoGPT's: its step time includes the evaluation
    trainer.step(iter_num)
    t1 = time.perf_counter()
    step_seconds.append(t1 - t0)
    t0 = t1
    iter_num += 1
    if iter_num > s.max_iters:
      break
  return dict(evals=evals, step_seconds=step_seconds)
