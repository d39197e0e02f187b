"""The optimised HLO of a compiled step (`compiled.as_text()`), parsed for pricing.

  module = parse(hlo_text)          computations (name -> [Instr]), the entry, instructions by name
  arrays(shape), shape_bytes(shape) the arrays of a shape text and their bytes
  matmul_flops(instrs, module)      XLA's own FLOP formulas for dots and convolutions
  while_trip_count(instr, module)   how often a while loop runs

A computation ends only at a line that is exactly "}": a Pallas kernel's instruction spans several
lines (its kernel_metadata holds JSON), and its continuation lines begin with "}}, metadata=";
ending a computation at any line starting with "}" drops everything after the first Pallas call.
Lines that start neither an instruction nor a computation continue the last instruction.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np

DTYPE_BYTES = {
    "pred": 1,
    "s4": 0.5,
    "u4": 0.5,
    "s8": 1,
    "u8": 1,
    "f8e4m3fn": 1,
    "f8e5m2": 1,
    "bf16": 2,
    "f16": 2,
    "s16": 2,
    "u16": 2,
    "f32": 4,
    "s32": 4,
    "u32": 4,
    "f64": 8,
    "s64": 8,
    "u64": 8,
    "c64": 8
}
# dtype[dims]{layout}: the layout may hold tiles and a memory space, "{1,0:T(8,128)(2,1)S(1)}".
ARRAY = re.compile(r"\b(pred|[a-z]+\d+[a-z0-9]*)\[([\d,]*)\](\{[^{}]*(?:\([^)]*\))*[^{}]*\})?")
_INSTRUCTION = re.compile(r"^\s*(ROOT )?%(\S+) = (.+?) ([a-z][a-z0-9-]*)\((.*)$")
_HEADER = re.compile(r"^(ENTRY )?%(\S+) \(.*\{\s*$")


@dataclasses.dataclass
class Instr:
  """One instruction: `%name = shape opcode(operands), attrs`."""
  name: str
  shape: str  # the result's shape text: an array, or a tuple of them
  opcode: str
  operands: list[str]  # the operands' instruction names
  attrs: str  # everything after the operand list (and its continuation lines)
  root: bool = False
  inside: str = ""  # the operand list's text: a constant's literal, a parameter's number

  @property
  def called(self) -> list[str]:
    """The computations this instruction calls (fusion calls=, while body=, to_apply=, ...)."""
    names = re.findall(
        r"(?:calls|body|condition|to_apply|true_computation|false_computation)=%([\w.-]+)",
        self.attrs)
    for group in re.findall(r"(?:branch_computations|calls)=\{([^}]*)\}", self.attrs):
      names += re.findall(r"%([\w.-]+)", group)
    return names

  @property
  def number(self) -> int | None:
    """A scalar constant's value, or a parameter's number."""
    match = re.fullmatch(r"\s*(-?\d+)\s*", self.inside)
    return int(match.group(1)) if match else None


@dataclasses.dataclass
class Module:
  computations: dict[str, list[Instr]]
  entry: str
  by_name: dict[str, Instr]  # instruction names are unique in a module

  def shape_of(self, name: str) -> str:
    return self.by_name[name].shape if name in self.by_name else ""

  def fused(self, instr: Instr) -> list[Instr]:
    """The instructions of the computation a fusion (or call) runs; [] for others."""
    called = instr.called
    return self.computations.get(called[0], []) if called else []


def parse(hlo_text: str) -> Module:
  computations, by_name, entry, current, last = {}, {}, "", None, None
  for line in hlo_text.splitlines():
    header = _HEADER.match(line)
    if header:
      current, last = computations.setdefault(header.group(2), []), None
      entry = header.group(2) if header.group(1) else entry
      continue
    if line.rstrip() == "}":  # not "}}, metadata=...", a Pallas kernel's continuation
      current, last = None, None
      continue
    if current is None:
      continue
    match = _INSTRUCTION.match(line)
    if match:
      operands, attrs, inside = _split_operands(match.group(5))
      last = Instr(match.group(2), match.group(3), match.group(4), operands, attrs,
                   bool(match.group(1)), inside)
      current.append(last)
      by_name[last.name] = last
    elif last is not None:
      last.attrs += "\n" + line
  return Module(computations, entry, by_name)


def _split_operands(rest: str) -> tuple[list[str], str, str]:
  """'%a, %b), attrs' -> (['a', 'b'], 'attrs', '%a, %b'), nested parentheses honoured."""
  depth, i = 1, 0
  while i < len(rest) and depth:
    depth += {"(": 1, ")": -1}.get(rest[i], 0)
    i += 1
  inside = rest[:i - 1]
  return re.findall(r"%([\w.-]+)", inside), rest[i:].lstrip(", "), inside


def arrays(shape: str) -> list[tuple[str, tuple[int, ...], str]]:
  """(dtype, dims, layout) of every array of a shape text (several for a tuple)."""
  return [(dtype, tuple(int(d)
                        for d in dims.split(",")
                        if d), layout)
          for dtype, dims, layout in ARRAY.findall(shape)]


def dims(shape: str) -> tuple[int, ...]:
  """The dimensions of a shape's first array (() for a scalar or no array)."""
  found = arrays(shape)
  return found[0][1] if found else ()


def array_bytes(dtype: str, shape: tuple[int, ...]) -> float:
  return DTYPE_BYTES.get(dtype, 4) * math.prod(shape)


def shape_bytes(shape: str) -> float:
  return sum(array_bytes(dtype, d) for dtype, d, _ in arrays(shape))


def attribute(text: str, key: str) -> str | None:
  match = re.search(r"\b" + key + r"=(\{[^}]*\}|[^,\s]+)", text)
  return match.group(1) if match else None


def custom_call_target(instr: Instr) -> str | None:
  match = re.search(r'custom_call_target="([^"]+)"', instr.attrs)
  return match.group(1) if match else None


def backend_config(instr: Instr) -> dict:
  """The JSON of an instruction's backend_config ({} when there is none, or it is not JSON)."""
  start = instr.attrs.find("backend_config={")
  if start < 0:
    return {}
  text, depth = instr.attrs[start + len("backend_config="):], 0
  for i, char in enumerate(text):
    depth += {"{": 1, "}": -1}.get(char, 0)
    if depth == 0:
      try:
        return json.loads(text[:i + 1])
      except json.JSONDecodeError:
        return {}
  return {}


# --- FLOPs, as XLA's HloCostAnalysis counts them ---------------------------------------------------


def dot_flops(instr: Instr, module: Module) -> float:
  """2 x output elements x the contracted size."""
  lhs = dims(module.shape_of(instr.operands[0]))
  contracting = (attribute(instr.attrs, "lhs_contracting_dims") or "{}").strip("{}")
  k = math.prod(lhs[int(i)] for i in contracting.split(",") if i)
  return 2.0 * math.prod(dims(instr.shape)) * k


def _window(attrs: str, n: int) -> dict[str, list]:
  fields = dict(size=[1] * n,
                stride=[1] * n,
                pad=[(0, 0)] * n,
                lhs_dilate=[1] * n,
                rhs_dilate=[1] * n)
  text = re.search(r"window=\{([^}]*)\}", attrs)
  for key, value in re.findall(r"(\w+)=(\S+)", text.group(1) if text else ""):
    parts = value.split("x")
    if key == "pad":
      fields["pad"] = [tuple(int(p) for p in part.split("_")) for part in parts]
    elif key in fields:
      fields[key] = [int(p) for p in parts]
  return fields


def conv_flops(instr: Instr, module: Module) -> float:
  """XLA's GetConvolutionFlops: 2 x (input features / feature groups) x output features x (batch /
  batch groups) x, per spatial dimension, the valid (output, kernel) position pairs (padding,
  strides and dilations honoured: TPU HLO writes batched matmuls as convolutions with dilated
  windows, whose valid pairs are the diagonal only)."""
  lhs_labels, rest = attribute(instr.attrs, "dim_labels").split("_")
  rhs_labels, out_labels = rest.split("->")
  lhs, rhs = dims(module.shape_of(instr.operands[0])), dims(module.shape_of(instr.operands[1]))
  out = dims(instr.shape)
  spatial = sorted(c for c in lhs_labels if c.isdigit())
  window = _window(instr.attrs, len(spatial))
  pairs = 1
  for s, digit in enumerate(spatial):
    size_in = lhs[lhs_labels.index(digit)]
    o = np.arange(out[out_labels.index(digit)])[:, None]
    k = np.arange(rhs[rhs_labels.index(digit)])[None, :]
    position = o * window["stride"][s] - window["pad"][s][0] + k * window["rhs_dilate"][s]
    base = window["lhs_dilate"][s]
    valid = (position % base == 0) & (position // base >= 0) & (position // base < size_in)
    pairs *= int(valid.sum())
  feature_groups = int(attribute(instr.attrs, "feature_group_count") or 1)
  batch_groups = int(attribute(instr.attrs, "batch_group_count") or 1)
  return (2.0 * lhs[lhs_labels.index("f")] / feature_groups * out[out_labels.index("f")] *
          lhs[lhs_labels.index("b")] / batch_groups * pairs)


def matmul_flops(instrs: list[Instr], module: Module) -> float:
  """Dot and convolution FLOPs of these instructions, fusions followed into what they call."""
  total = 0.0
  for instr in instrs:
    if instr.opcode == "dot":
      total += dot_flops(instr, module)
    elif instr.opcode == "convolution":
      total += conv_flops(instr, module)
    elif instr.opcode == "fusion":
      total += matmul_flops(module.fused(instr), module)
  return total


def multiplies_fp32(instrs: list[Instr], module: Module) -> bool:
  """Whether a dot or convolution among these (fusions followed) multiplies float32 operands."""
  for instr in instrs:
    if instr.opcode in ("dot", "convolution") and module.shape_of(
        instr.operands[0]).startswith("f32"):
      return True
    if instr.opcode == "fusion" and multiplies_fp32(module.fused(instr), module):
      return True
  return False


# --- While loops -----------------------------------------------------------------------------------


def while_trip_count(instr: Instr, module: Module) -> int | None:
  """How often a while loop runs: backend_config's known_trip_count (GPUs print it), else read off
  the loop (TPUs print none): the condition's root compares element i of the loop state with a
  constant N, `i < N` (possibly inside a fusion), and element i of the initial tuple is a constant
  c (possibly behind copies): N - c, as jax's scan and fori_loop count up by one. None when the
  loop has another form."""
  known = re.search(r'"known_trip_count":\{"n":"(\d+)"', instr.attrs)
  if known:
    return int(known.group(1))
  condition = re.search(r"condition=%([\w.-]+)", instr.attrs)
  scope = {i.name: i for i in module.computations.get(condition.group(1), [])} if condition else {}
  compare = outer = next((i for i in scope.values() if i.root), None)
  condition_scope = scope
  if compare is not None and compare.opcode == "fusion":  # the compare fused with its operands
    scope = {i.name: i for i in module.fused(compare)}
    compare = next((i for i in scope.values() if i.root), None)
  else:
    outer = None
  if compare is None or compare.opcode != "compare" or attribute(compare.attrs,
                                                                 "direction") != "LT":
    return None

  def resolve(name: str) -> Instr | None:
    node = scope.get(name)
    if node is not None and node.opcode == "parameter" and outer is not None:
      return condition_scope.get(outer.operands[node.number])
    return node

  counter, limit = resolve(compare.operands[0]), resolve(compare.operands[1])
  if (counter is None or limit is None or counter.opcode != "get-tuple-element" or
      limit.opcode != "constant" or limit.number is None):
    return None
  start, init = 0, module.by_name.get(instr.operands[0])
  if init is not None and init.opcode == "tuple":
    first = module.by_name.get(init.operands[int(attribute(counter.attrs, "index"))])
    while first is not None and first.opcode in ("copy", "bitcast", "copy-done") and first.operands:
      first = module.by_name.get(first.operands[0])
    if first is None or first.opcode != "constant" or first.number is None:
      return None
    start = first.number
  return limit.number - start
