"""Random-weight files for the aesthetic stage, so its speed can be measured without a model hub.

Speed does not depend on weight values; the scores these files give are meaningless.
"""

from __future__ import annotations

from pathlib import Path

from soraplan.curation.aesthetic import LAION_MLP_FILE, laion_mlp

RANDOM_AESTHETIC = "random ViT-L-14 + LAION head: aesthetic scores are meaningless, speed only"


def save_random_aesthetic(directory: Path, clip_model: str = "ViT-L-14") -> Path:
    """Write a randomly initialised open_clip model and LAION head into a weights dir, the head
    where the stage looks for it by default; returns the CLIP file to set as `clip_pretrained`."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    clip = directory / f"{clip_model}-random.safetensors"
    save_file(open_clip.create_model(clip_model, pretrained=None).state_dict(), str(clip))
    torch.save(laion_mlp().state_dict(), directory / LAION_MLP_FILE)
    return clip
