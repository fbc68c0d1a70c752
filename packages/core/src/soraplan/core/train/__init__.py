"""The trainer kit every soraplan trainer (WF-VAE, DiT, caption refiner) is built from.

Needs the `train` extra of soraplan-core (torch, deepspeed, tensorboard, safetensors).
"""
