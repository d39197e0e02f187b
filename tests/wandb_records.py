"""Reads the history rows back from W&B's offline run files (`run-<id>.wandb`), for the tests.

wandb 0.31 has no reader of its own (no datastore module, no `wandb sync --view`). The file is a
7-byte header (":W&B", magic, version) and 32 KiB blocks of LevelDB-log records (crc32 u32,
length u16, type u8: 1 full, 2 first, 3 middle, 4 last), each a wandb_internal_pb2.Record.
"""

from __future__ import annotations

import glob
import json
import os
import struct


def read_records(path: str):
  from wandb.proto import wandb_internal_pb2
  data = open(path, "rb").read()
  assert data[:4] == b":W&B", data[:8]
  position, block, pending, records = 7, 32768, b"", []
  while position + 7 <= len(data):
    left = block - position % block
    if left < 7:  # a block's trailer
      position += left
      continue
    _, length, kind = struct.unpack("<IHB", data[position:position + 7])
    if length == 0 and kind == 0:
      position += left
      continue
    chunk = data[position + 7:position + 7 + length]
    position += 7 + length
    if kind in (2, 3):  # first, middle
      pending += chunk
      continue
    payload, pending = pending + chunk, b""
    record = wandb_internal_pb2.Record()
    record.ParseFromString(payload)
    records.append(record)
  return records


def offline_runs(wandb_dir: str) -> list[dict]:
  """[{"id": run id, "history": [row, ...]}] for each offline run under wandb_dir, oldest first."""
  runs = []
  for folder in sorted(glob.glob(os.path.join(wandb_dir, "wandb", "offline-run-*"))):
    [path] = glob.glob(os.path.join(folder, "run-*.wandb"))
    records = read_records(path)
    ids = [r.run.run_id for r in records if r.WhichOneof("record_type") == "run"]
    history = [{
        item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item
    } for r in records if r.WhichOneof("record_type") == "history"]
    runs.append(dict(id=ids[0], history=history))
  return runs
