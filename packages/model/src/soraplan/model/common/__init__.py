"""Training utilities shared by the VAE and DiT trainers: EMA, atomic checkpoints, process setup."""
