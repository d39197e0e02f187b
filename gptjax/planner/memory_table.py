"""The presets' memory table: per preset and target, the train step's memory per device, whether it
fits and what would, its est. MFU; compiled without the hardware and shipped as memory_table.json
(`python -m gptjax.show_configs --memory` prints it, `--refresh` compiles it anew).
"""

from __future__ import annotations

import importlib.resources
import os
from typing import Any

import ml_collections

from gptjax import config as config_lib
from gptjax import describe, files, presets
from gptjax.errors import ConfigError
from gptjax.planner import estimate as estimate_lib
from gptjax.planner import targets
from gptjax.planner.compiled import fast_is_exact
from gptjax.planner.memory_model import generation_memory
from gptjax.planner.report import fix_label, remat_suffix
from gptjax.planner.search import fewest_changes_that_fit
from gptjax.units import GiB


def memory_rows(directory: str | None = None,
                target_names=None,
                compile: bool = False,
                log=lambda line: None,
                preset_names=None) -> list[dict[str, Any]]:
  """Per preset and target: training memory per device at the shipped settings, whether it fits,
  and where it does not, the fewest changes that fit with 10% free; and sampling memory.

  With `compile`, every figure is XLA's for the compiled step (without the hardware; on GPUs
  extrapolated per layer from 1- and 2-layer compiles, exact there) and every suggested change is
  compiled too; the analytic model's figure is kept beside it. Without, the analytic model alone.
  `preset_names`: those rows only (every preset but the CPU recipes by default).

  Raises:
    ConfigError: a name in `preset_names` that is not a preset with a row.
  """
  rows, catalogue = [], presets.catalogue(directory)
  table = [
      row for row in describe.preset_table(directory) if not row["preset"].startswith("recipes/")
  ]  # CPU recipes: not for GPUs and TPUs
  unknown = sorted(set(preset_names or ()) - {row["preset"] for row in table})
  if unknown:
    raise ConfigError(f"--presets: {', '.join(unknown)} has no row in the memory table. Fix: "
                      f"names from `python -m gptjax.show_configs` (the CPU recipes have none).")
  for row in table:
    if preset_names and row["preset"] not in preset_names:
      continue
    config = presets.load_validated(catalogue[row["preset"]])
    cells = {}
    for name in target_names or targets.COMMON_TARGETS:
      log(f"{row['preset']} on {name}")
      cells[name] = memory_cell(config, targets.parse_target(name), compile)
    generation = generation_memory(config_lib.ModelConfig.from_config(config), batch=1).total
    rows.append(
        dict(preset=row["preset"],
             params=row["params"],
             dtype=config.dtype,
             remat=config.remat,
             batch=f"{config.batch_size}x{config.block_size}",
             targets=cells,
             generation=generation))
  return rows


def memory_cell(config: ml_collections.ConfigDict, target, compile: bool) -> dict[str, Any]:
  """One cell of the memory table (see memory_rows)."""
  cell = dict(total=None,
              analytic=None,
              fits=False,
              fix=None,
              fix_total=None,
              method=estimate_lib.DEVICELESS if compile else estimate_lib.ANALYTIC,
              step_seconds=None,
              mfu=None,
              mfu_roofline=None)
  try:
    analytic = estimate_lib.estimate(config, target, method=estimate_lib.ANALYTIC)
    planned = (estimate_lib.estimate(config, target, method="compile", fast=fast_is_exact(target))
               if compile else analytic)
    cell.update(analytic=analytic.memory.total, total=planned.memory.total)
    cell["fits"] = cell["total"] <= target.device_memory_bytes
    if compile:  # the same compile's time: XLA's TPU cost model, or the GPU's expected time
      cell.update(step_seconds=planned.step_seconds,
                  mfu=planned.mfu,
                  mfu_roofline=planned.mfu_roofline)
  except ConfigError:  # the shipped batch does not split over this many devices
    pass
  found = None if cell["fits"] else fewest_changes_that_fit(config, target, compile)
  if found:
    cell.update(fix=fix_label(found[0].estimate.settings, config), fix_total=found[1])
  return cell


def with_planned_mfu(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The preset table's rows with the shipped memory table's est. MFU on a v5e-1 and an H100."""
  from gptjax.describe import MFU_COLUMNS
  planned = {row["preset"]: row["targets"] for row in read_memory_table()}
  for row in rows:
    for _, key, _ in MFU_COLUMNS:
      target = key.removeprefix("mfu_")
      row[key] = _mfu_cell(planned.get(row["preset"], {}).get(target), target.startswith("gpu"))
  return rows


def _mfu_cell(cell: dict[str, Any] | None, gpu: bool) -> str:
  """"47.4%"; on GPUs the expected MFU with the roofline's: "26.2% (46.4%)"."""
  if not cell or cell.get("mfu") is None:
    return "–"
  if not cell["fits"]:
    return "✗"
  if gpu and cell.get("mfu_roofline"):
    return f"{cell['mfu']:.1%} ({cell['mfu_roofline']:.1%})"
  return f"{cell['mfu']:.1%}"


def _memory_cell(cell: dict[str, Any] | None) -> str:
  if cell is None:  # a row added by a refresh of some columns only
    return "–"
  shipped = "batch ∤ devices" if cell["total"] is None else f"{cell['total'] / GiB:.1f}"
  if cell["fits"]:
    return f"{shipped} ✓"
  if cell["fix"]:
    return f"{shipped} ✗ → {cell['fix']} {cell['fix_total'] / GiB:.1f}"
  return f"{shipped} ✗"


def format_memory_table(rows: list[dict[str, Any]],
                        markdown: bool = False,
                        columns: dict[str, str] | None = None) -> str:
  """GiB per device for training (✓ fits, ✗ does not → what fits, and its GiB) and sampling; with
  `columns` (target -> how and when its column was compiled), a line naming the columns compiled
  before the newest ones."""
  names = list(rows[0]["targets"]) if rows else []
  headings = ["Preset", "Batch", "Train dtype", *names, "Sample (1 seq)"]
  body = [[
      row["preset"], row["batch"], row["dtype"] + remat_suffix(row["remat"]),
      *[_memory_cell(row["targets"].get(n)) for n in names], f"{row['generation'] / GiB:.2f}"
  ] for row in rows]
  older = older_columns(columns or {})
  note = ([
      "", f"Compiled by {older['newest']}: all but {', '.join(older['names'])}, compiled by "
      f"{older['about']}, an older step's figures: `python -m gptjax.show_configs --memory "
      f"--refresh --targets={','.join(older['names'])}` compiles them for today's."
  ] if older else [])
  if markdown:
    lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    lines += ["| " + " | ".join([f"`{r[0]}`", *r[1:]]) + " |" for r in body]
    return "\n".join(lines + note)
  widths = [max(len(c) for c in column) for column in zip(headings, *body)]
  line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
  return "\n".join([line(headings), "  ".join("-" * w for w in widths), *map(line, body), *note])


def older_columns(columns: dict[str, str]) -> dict[str, Any] | None:
  """The columns compiled before the newest ones (by the date that ends each `about`): their names
  and provenance, and the newest's; None when every column was compiled by one refresh."""
  dated = {name: about for name, about in columns.items() if about}
  if len(set(dated.values())) < 2:
    return None
  newest = max(dated.values(), key=lambda about: about.rsplit(", ", 1)[-1])
  names = [name for name, about in dated.items() if about != newest]
  abouts = sorted({dated[name] for name in names})
  return dict(names=names,
              about=" and ".join(_provenance(a) for a in abouts),
              newest=_provenance(newest))


def _provenance(about: str) -> str:
  """"jax 0.10.2 on 2026-12-03" from "python -m ... --refresh, jax 0.10.2, 2026-12-03"."""
  parts = about.split(", ")
  return f"{parts[-2]} on {parts[-1]}" if len(parts) >= 3 else about


def memory_table_path() -> str:
  """The compiled memory table shipped with gptjax (`show_configs --memory` prints it)."""
  return str(importlib.resources.files("gptjax.planner") / "memory_table.json")


def read_memory_table() -> list[dict[str, Any]]:
  return files.read_json(memory_table_path())["rows"]


def read_memory_columns() -> dict[str, str]:
  """How and when each column (target) of the shipped table was compiled."""
  table = files.read_json(memory_table_path())
  return table.get("columns") or {name: table["about"] for name in targets.COMMON_TARGETS}


def store_memory_table(rows: list[dict[str, Any]],
                       about: str,
                       every_row: bool = True) -> list[dict[str, Any]]:
  """Writes refreshed cells into the memory table, keeping the other targets' columns, the other
  presets' rows and how each column was compiled (several --refresh --targets=... runs may share
  the file: it is locked while it is rewritten). A refresh of some rows only (`every_row` False:
  --presets) leaves a column's provenance as it was: its other cells are still that old. Returns
  every row of the table, in the preset table's order."""
  path = memory_table_path()
  with files.locked(path + ".lock"):
    columns, old = {}, {}
    if os.path.isfile(path):
      columns, old = read_memory_columns(), {row["preset"]: row for row in read_memory_table()}
    refreshed = {name for row in rows for name in row["targets"]}
    for row in rows:
      cells = {**old.get(row["preset"], {}).get("targets", {}), **row["targets"]}
      row["targets"] = {name: cells[name] for name in targets.COMMON_TARGETS if name in cells}
    new = {row["preset"]: row for row in rows}
    if not every_row:  # the other presets' rows stay, in the order of the preset table
      order = [row["preset"] for row in describe.preset_table()]
      merged = {**old, **new}
      rows = [merged[name] for name in order if name in merged]
    columns = {
        name:
            about if name in refreshed and (every_row or name not in columns) else columns.get(name)
        for name in targets.COMMON_TARGETS
        if name in refreshed or name in columns
    }
    files.write_json(path, dict(about=about, columns=columns, rows=rows))
  return rows
