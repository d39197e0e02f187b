"""Modern counterparts of presets (`--config=modern/<name>`): the same shape and parameter count
within 5%, with the architecture options of modded-nanogpt's GPT-2 speedrun (RoPE, RMSNorm, ReLU²,
QK-norm), Muon and a warmup-stable-decay schedule."""
