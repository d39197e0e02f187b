"""The fit planner: memory and time of the train step on a target, with or without the hardware.

  targets       the chips and slices one can plan for, and their compile-only devices
  options       the step's options it prices (attention, remat policy, chunked loss, scan)
  compiled      XLA's figures for the real step compiled for a target, loops and kernels counted
  hlo           the optimised HLO parsed: computations, XLA's FLOP formulas, loop trip counts
  calls         custom calls priced from their shapes (cuBLAS, cuDNN, Pallas attention)
  kernels       the walk: every kernel of a compiled program priced, loops times their trips
  memory_model  the analytic memory model (memory_model.json) where nothing compiles
  roofline      rooflines of the compiled program and of the model; the GPU efficiency
  estimate      what a config needs on a target, every figure with its source
  search        the fastest settings that fit; the fewest changes that fit
  fit           what the trainer asks: does the compiled step fit, what to do when it does not
  measure       the step run and timed on this machine (`plan --measure`)
  report        what `python -m gptjax.plan` prints
  memory_table  the presets' memory table (memory_table.json): `show_configs --memory`
"""
