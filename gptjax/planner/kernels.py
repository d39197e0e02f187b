"""What each kernel of a compiled program costs, and the walk that sums them over the program.

  w = walk(hlo_text, Device(peak, peak_fp32, bandwidth, link, launch))
  w.total        every kernel, while-loop bodies times their trip counts: FLOPs, bytes, roofline
  w.once         what XLA's TPU cost analysis counts: loop bodies once, Pallas kernels that declare
                 no cost left out (the calibration of the TPU correction, compiled.py)
  w.unseen       those Pallas kernels, priced from their shapes (times their loops' trips)
  w.marked       the kernels each of `marks` picks (e.g. those that hold attention scores)

A kernel's time is its roofline, max(FLOPs / peak, bytes / bandwidth), plus a launch (GPUs);
collectives move their result at the link bandwidth. FLOPs are XLA's formulas for dots and
convolutions (hlo.py); custom calls are priced from their operand shapes: cuBLAS gemms at
2 x M x N x K, cuDNN's fused attention and Pallas attention kernels (splash, flash) by the
(query, key) tile pairs they compute. Bytes are operands and results, except that a
dynamic-update-slice moves its update (read and written) and not its buffer, and a fusion operand
read only through dynamic-slices moves the slices.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Callable

from gptjax.planner import hlo
from gptjax.planner.calls import Cost, Device, custom_kernel

FREE = ("parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all",
        "partition-id", "replica-id", "opt-barrier", "optimization-barrier")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
# A concatenation by bitcast, an allocation (TPUs): no data moves.
FREE_TARGETS = ("ConcatBitcast", "AllocateBuffer")
_VIEWS = ("bitcast", "copy", "reshape")


@dataclasses.dataclass
class Loop:
  name: str
  trips: int | None  # None: not read (counted once)
  body: Cost  # one trip


@dataclasses.dataclass
class Walk:
  total: Cost
  once: Cost
  unseen: Cost
  marked: dict[str, Cost]
  loops: list[Loop]
  by_kind: dict[str, Cost]


Mark = Callable[[hlo.Instr, hlo.Module], bool]  # picks kernels: walk(marks={name: mark})

# --- Bytes -----------------------------------------------------------------------------------------


def instr_bytes(instr: hlo.Instr, module: hlo.Module) -> float:
  """Bytes a top-level instruction moves: its operands and results, except that
  - a dynamic-update-slice updates its buffer in place: it moves its update twice (read, write;
    as a fusion's output, the write, the fusion's operands being read), and neither the buffer
    operand nor that output counts whole;
  - a fusion operand read only through dynamic-slices (behind views, in nested fusions too)
    moves the slices;
  - slice-start and copy-start move what they copy."""
  shapes = hlo.ARRAY.findall(instr.shape)
  arrays = ["{}[{}]".format(dtype, d) for dtype, d, _ in shapes]
  if instr.opcode == "slice-start":  # ((input), slice, s32)
    return 2 * hlo.shape_bytes(arrays[1])
  if instr.opcode == "copy-start":  # (destination, source, context)
    return hlo.shape_bytes(arrays[0]) + hlo.shape_bytes(arrays[1])
  if instr.opcode == "dynamic-update-slice":
    return 2 * hlo.shape_bytes(module.shape_of(instr.operands[1]))
  operand_shapes = [module.shape_of(o) for o in instr.operands]
  operands = [hlo.shape_bytes(s) for s in operand_shapes]
  outputs = [hlo.shape_bytes(a) for a in arrays]
  if instr.opcode != "fusion" or not instr.called:
    return sum(operands) + sum(outputs)
  fused = {i.name: i for i in module.fused(instr)}
  users = _users(fused)
  for name, node in fused.items():
    if node.opcode == "parameter" and node.number is not None and node.number < len(operands):
      reads = _slice_reads(module, fused, users, name)
      if reads is not None:
        operands[node.number] = reads
  root = next((i for i in fused.values() if i.root), None)
  roots = [fused.get(o) for o in root.operands] if root and root.opcode == "tuple" else [root]
  for k, node in enumerate(roots[:len(outputs)]):
    while node is not None and node.opcode in _VIEWS and node.operands:
      node = fused.get(node.operands[0])
    if node is not None and node.opcode == "dynamic-update-slice":
      update = fused.get(node.operands[1])
      outputs[k] = hlo.shape_bytes(update.shape) if update is not None else 0.0  # the write
  return sum(operands) + sum(outputs)


def _users(computation: dict[str, hlo.Instr]) -> dict[str, list[hlo.Instr]]:
  users: dict[str, list[hlo.Instr]] = {}
  for instr in computation.values():
    for operand in instr.operands:
      users.setdefault(operand, []).append(instr)
  return users


def _slice_reads(module, computation, users, name) -> float | None:
  """Bytes read of `name` when only dynamic-slices (or in-place updates of it) read it, else None."""
  total = 0.0
  for user in users.get(name, []):
    if user.opcode in _VIEWS:
      inner = _slice_reads(module, computation, users, user.name)
    elif user.opcode == "dynamic-slice" and user.operands[0] == name:
      inner = hlo.shape_bytes(user.shape)
    elif user.opcode == "dynamic-update-slice" and user.operands[0] == name:
      inner = 0.0  # the buffer updated in place (its update is counted)
    elif user.opcode == "fusion" and user.called:
      nested = {i.name: i for i in module.fused(user)}
      inner = 0.0
      for position, operand in enumerate(user.operands):
        if operand != name:
          continue
        parameter = next(
            (i for i in nested.values() if i.opcode == "parameter" and i.number == position), None)
        got = None if parameter is None else _slice_reads(module, nested, _users(nested),
                                                          parameter.name)
        if got is None:
          return None
        inner += got
    else:
      return None
    if inner is None:
      return None
    total += inner
  return total


# --- The walk --------------------------------------------------------------------------------------


def walk(hlo_text: str, device: Device, marks: dict[str, Mark] | None = None) -> Walk:
  """Every kernel of an optimised (per-device) module priced on `device`; see the module's doc.
  `marks`: the kernels each picks are summed apart too (Walk.marked)."""
  module = hlo.parse(hlo_text)
  loops: list[Loop] = []

  @functools.lru_cache(maxsize=None)
  def run(name: str) -> _Sums:
    sums = _Sums()
    for instr in module.computations.get(name, []):
      if instr.opcode in FREE or instr.opcode.endswith("-done"):
        continue
      if instr.opcode == "while":
        body = run(re.search(r"body=%([\w.-]+)", instr.attrs).group(1))
        trips = hlo.while_trip_count(instr, module)
        loops.append(Loop(instr.name, trips, body.total))
        sums.add(body, trips or 1, loop=True)
      elif instr.opcode in ("call", "async-start"):
        for called in instr.called:
          sums.add(run(called))
      elif instr.opcode == "conditional":  # its dearest branch
        branches = [run(c) for c in instr.called]
        if branches:
          sums.add(max(branches, key=lambda b: b.total.seconds))
      else:
        kind, cost, seen = _price(instr, module, device)
        picked = [name for name, mark in (marks or {}).items() if mark(instr, module)]
        sums.kernel(kind, cost, seen, picked)
    return sums

  sums = run(module.entry)
  marked = {name: sums.marked.get(name, Cost()) for name in marks or {}}
  return Walk(sums.total, sums.once, sums.unseen, marked, loops, sums.kinds)


@dataclasses.dataclass
class _Sums:
  total: Cost = dataclasses.field(default_factory=Cost)
  once: Cost = dataclasses.field(default_factory=Cost)
  unseen: Cost = dataclasses.field(default_factory=Cost)
  marked: dict[str, Cost] = dataclasses.field(default_factory=dict)
  kinds: dict[str, Cost] = dataclasses.field(default_factory=dict)

  def kernel(self, kind: str, cost: Cost, seen: bool, marked: list[str]) -> None:
    self.total += cost
    self.kinds[kind] = self.kinds.get(kind, Cost()) + cost
    if seen:
      self.once += cost
    else:
      self.unseen += cost
    for name in marked:
      self.marked[name] = self.marked.get(name, Cost()) + cost

  def add(self, other: "_Sums", n: int = 1, loop: bool = False) -> None:
    """Adds `other` run n times; XLA's TPU cost analysis counts a loop's body once."""
    self.total += other.total * n
    self.once += other.once * (1 if loop else n)
    self.unseen += other.unseen * n
    for mine, theirs in ((self.marked, other.marked), (self.kinds, other.kinds)):
      for name, cost in theirs.items():
        mine[name] = mine.get(name, Cost()) + cost * n


def _price(instr: hlo.Instr, module: hlo.Module, device: Device) -> tuple[str, Cost, bool]:
  """(kind, cost, whether XLA's TPU cost analysis sees it) of one kernel."""
  if instr.opcode == "custom-call":
    if hlo.custom_call_target(instr) in FREE_TARGETS:
      return "free custom call", Cost(), True
    kernel = custom_kernel(instr, module)
    if kernel is not None:
      seconds = device.seconds(kernel.flops, kernel.bytes, kernel.fp32) + device.launch_seconds
      return kernel.kind, Cost(kernel.flops, kernel.bytes, seconds, 1), kernel.seen_by_xla
  moved = instr_bytes(instr, module)
  if instr.opcode.startswith(COLLECTIVES) and device.link_bandwidth:
    seconds = hlo.shape_bytes(instr.shape) / device.link_bandwidth + device.launch_seconds
    return "collective", Cost(0.0, moved, seconds, 1), True
  flops = hlo.matmul_flops([instr], module)
  fp32 = bool(flops) and hlo.multiplies_fp32([instr], module)
  seconds = device.seconds(flops, moved, fp32) + device.launch_seconds
  kind = "matmul" if flops else (hlo.custom_call_target(instr) or instr.opcode)
  return kind, Cost(flops, moved, seconds, 1), True


def holds_array(instr: hlo.Instr, module: hlo.Module, test: Callable[[tuple[int, ...]],
                                                                     bool]) -> bool:
  """Whether a kernel's result, an operand, or an instruction of what it fuses is an array whose
  dimensions pass `test` (a Mark's building block)."""
  texts = [instr.shape, *(module.shape_of(o) for o in instr.operands)]
  texts += [i.shape for i in _fused_tree(instr, module)]
  return any(test(d) for text in texts for _, d, _ in hlo.arrays(text))


def _fused_tree(instr: hlo.Instr, module: hlo.Module) -> list[hlo.Instr]:
  if instr.opcode != "fusion":
    return []
  found = []
  for inner in module.fused(instr):
    found += [inner, *_fused_tree(inner, module)]
  return found
