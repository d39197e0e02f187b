"""Quantities as gptjax prints them: bytes, counts, durations (one way each)."""

from __future__ import annotations

GiB = 2**30
MiB = 2**20
_BYTE_UNITS = (("TiB", 2**40), ("GiB", GiB), ("MiB", MiB), ("KiB", 2**10))


def format_bytes(n: float, unit: str | None = None) -> str:
  """2_433_626_112 -> '2.27 GiB' (the largest unit it reaches, or `unit`: 'GiB', 'MiB')."""
  scales = dict(_BYTE_UNITS)
  if unit is None:
    unit = next((name for name, scale in _BYTE_UNITS if abs(n) >= scale), "B")
  if unit == "B":
    return f"{int(n)} B"
  return f"{n / scales[unit]:,.2f} {unit}" if unit != "MiB" else f"{n / MiB:,.1f} MiB"


def format_count(n: int) -> str:
  """150,260,736 -> '150.26M'."""
  for unit, scale in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
    if n >= scale:
      return f"{n / scale:.2f}{unit}"
  return str(n)


def format_duration(seconds: float) -> str:
  """12.3 s, 4 min 5 s, 2 h 3 min."""
  if seconds < 60:
    return f"{seconds:.1f} s"
  if seconds < 3600:
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"
  return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def gib(n: float) -> str:
  """Bytes in GiB, as the planner reports every memory figure: '2.27 GiB'."""
  return format_bytes(n, "GiB")
