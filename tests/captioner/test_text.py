from soraplan.captioner.frames import FrameSamplingConfig
from soraplan.captioner.postprocess import clean_caption
from soraplan.captioner.prompts import PromptConfig

from .conftest import CAPTION_PROMPTS, REFINE_PROMPTS


def test_clean_caption_strips_boilerplate_and_whitespace():
    assert clean_caption("The video shows a dog running on the beach.") == "A dog running on the beach."
    assert clean_caption("  In this video,  a man\n walks  away .") == "A man walks away."
    assert clean_caption("Sure! The clip depicts that two cats play") == "Two cats play"
    assert clean_caption('"In the video we can see a red car ."') == "A red car."
    # Content that merely starts like boilerplate is kept.
    assert clean_caption("The videographer runs toward the sea.") == "The videographer runs toward the sea."


def test_prompt_templates_by_id():
    for file, ids in [(CAPTION_PROMPTS, ["video_describe", "video_dense"]), (REFINE_PROMPTS, ["osp_refine", "dense_target"])]:
        for prompt_id in ids:
            template = PromptConfig(file=str(file), id=prompt_id).build()
            assert template.id == prompt_id and len(template.text) > 40
    refine = PromptConfig(file=str(REFINE_PROMPTS), id="osp_refine").build()
    assert '"a {dog}"' in refine.user_text(caption="a {dog}")


def test_prompt_errors_name_the_key(tmp_path):
    import pytest

    from soraplan.core.config import ConfigError

    with pytest.raises(FileNotFoundError, match="prompt.file"):
        PromptConfig(file=str(tmp_path / "nope.yaml")).build()
    with pytest.raises(ConfigError, match="prompt.id: 'missing' .*video_describe"):
        PromptConfig(file=str(CAPTION_PROMPTS), id="missing").build()


def test_frame_times():
    keyframes = FrameSamplingConfig()
    assert keyframes.times(0.0, 10.0) == [1.0, 5.0, 9.0]
    uniform = FrameSamplingConfig(mode="uniform", num_frames=4)
    assert uniform.times(2.0, 6.0) == [2.5, 3.5, 4.5, 5.5]
    by_fps = FrameSamplingConfig(mode="fps", fps=2.0, max_frames=5)
    assert by_fps.times(0.0, 2.0) == [0.25, 0.75, 1.25, 1.75]
    assert len(by_fps.times(0.0, 100.0)) == 5
    assert len(by_fps.times(0.0, 0.1)) == 1


def test_hf_id_offline_cache_miss_names_the_key(tmp_path):
    import os
    import subprocess
    import sys

    # A fresh interpreter: huggingface_hub reads HF_HUB_OFFLINE when it is imported.
    code = (
        "from soraplan.captioner.hub import require_pretrained, ModelSourceError\n"
        "try:\n    require_pretrained('some-org/some-vlm', 'vlm.model')\n"
        "except ModelSourceError as exc:\n    print(exc)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    assert "some-org/some-vlm" in out and "HF_HUB_OFFLINE" in out and "vlm.model" in out


def test_shipped_configs_load():
    from soraplan.captioner.caption import CaptionJobConfig
    from soraplan.captioner.refine.merge import MergeConfig
    from soraplan.captioner.refine.rewrite import RewriteJobConfig
    from soraplan.captioner.refine.train import RefineTrainConfig
    from soraplan.core.config import load_config

    from .conftest import REPO

    configs = REPO / "pipelines" / "configs"
    for name in ["caption.yaml", "caption_qwen2vl.yaml", "caption_tiny.yaml"]:
        cfg = load_config(CaptionJobConfig, configs / name)
        cfg.prompt.file = str(REPO / cfg.prompt.file)
        assert cfg.prompt.build().id == cfg.prompt.id
    recipe = load_config(RefineTrainConfig, configs / "refine_llama3.yaml")
    assert (recipe.lora.r, recipe.lora.alpha, recipe.lora.dropout) == (64, 64, 0.1)
    optimizer = recipe.optimizer
    assert (recipe.epochs, recipe.global_batch_size, optimizer.lr, optimizer.warmup_ratio) == (1.0, 32, 1.5e-4, 0.1)
    assert optimizer.schedule == "linear" and not recipe.ema.enabled
    assert recipe.gradient_checkpointing and recipe.zero_stage == 2
    assert load_config(RefineTrainConfig, configs / "refine_tiny.yaml").dtype == "float32"
    # Defaults alone are the recipe too.
    assert load_config(RefineTrainConfig).optimizer == optimizer
    assert load_config(MergeConfig, configs / "refine_merge.yaml").adapter == "runs/refiner/adapter"
    assert load_config(RewriteJobConfig, configs / "refine_rewrite.yaml").refiner.prompt.id == "osp_refine"
