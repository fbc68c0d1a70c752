"""WF-VAE: wavelet-flow causal video VAE with lossless chunked encode/decode."""

from soraplan.model.vae.configs import WFVAE_CONFIGS, WFVAEConfig, load_pretrained
from soraplan.model.vae.modeling_wfvae import WFVAEModel, WFVAEOutput

__all__ = ["WFVAE_CONFIGS", "WFVAEConfig", "WFVAEModel", "WFVAEOutput", "load_pretrained"]
