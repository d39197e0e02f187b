"""A training run: everything before the first step, the loop, what it records, evaluation.

  run        config -> data -> mesh -> compiled step (checked to fit) -> lock -> restore or init
  loop       batch -> step -> log -> evaluate -> checkpoint, until max_iters or a signal
  metrics    records: log line, progress bar, metrics.jsonl, TensorBoard, MFU, loss plot
  evaluate   the fixed evaluation batches and their losses; the exact loss of a whole split
  lock       one writer per run directory
"""
