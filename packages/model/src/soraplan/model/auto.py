"""Our models and pipeline through diffusers' generic loaders (`AutoModel`, `DiffusionPipeline`).

diffusers looks a saved `_class_name` up in the diffusers package only. A class defined elsewhere
loads through a module file saved beside its config and named there (config.json's `auto_map`
for AutoModel, `custom_pipeline=` for DiffusionPipeline), and diffusers runs that file only with
`trust_remote_code=True`. Ours holds a single import of the installed soraplan class, so those
loaders return the very class soraplan uses. Our own loaders (`SkiparseDiT.from_pretrained`,
`SoraPlanPipeline.from_pretrained`, the CLIs) never run it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def write_class_module(directory: str | os.PathLike[str], cls: type) -> str:
    """Write <directory>/<last part of cls's module>.py importing `cls` from the installed
    soraplan; returns the module name (what `auto_map` / `custom_pipeline` name)."""
    module = cls.__module__.rsplit(".", 1)[-1]
    Path(directory).mkdir(parents=True, exist_ok=True)
    Path(directory, f"{module}.py").write_text(
        f'"""{cls.__name__} from the installed soraplan-model package (not a copy of it)."""\n\n'
        f"from {cls.__module__} import {cls.__name__}\n")
    return module


class AutoModelFiles:
    """Mixin placed before ModelMixin: saving the config (save_pretrained, and the trainers' EMA
    directories) also writes the module file that config.json's `auto_map` names, so
    `AutoModel.from_pretrained(dir, trust_remote_code=True)` loads the model."""

    _auto_class = "AutoModel"  # what ConfigMixin.register_for_auto_class("AutoModel") sets

    def save_config(self, save_directory: str | os.PathLike[str], *args: Any, **kwargs: Any) -> None:
        write_class_module(save_directory, type(self))  # first, so push_to_hub uploads it too
        super().save_config(save_directory, *args, **kwargs)

    @classmethod
    def extract_init_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        # auto_map is for AutoModel, not a model argument: without this every load warns about it.
        config = {key: value for key, value in config_dict.items() if key != "auto_map"}
        return super().extract_init_dict(config, **kwargs)
