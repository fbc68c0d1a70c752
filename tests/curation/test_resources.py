"""The analyzer actor's Ray request, derived from the enabled stages' declared needs."""

from pathlib import Path

from soraplan.curation.aesthetic import AestheticScorer
from soraplan.curation.camera import CameraMotion
from soraplan.curation.clip_score import ClipScorer
from soraplan.core.config import load_config
from soraplan.curation.cuts import SceneCutDetector
from soraplan.curation.motion import FlowMotion, LpipsMotion
from soraplan.curation.ocr import TextDetector
from soraplan.curation.pipeline import WRITE_TASK_CPUS, CurateConfig, actor_resources
from soraplan.curation.resources import Resources

CONFIGS = Path(__file__).resolve().parents[2] / "pipelines" / "configs"


def profile(name: str, *overrides: str) -> CurateConfig:
    return load_config(CurateConfig, CONFIGS / name, list(overrides))


def test_default_profile_takes_no_gpu_and_leaves_the_writer_a_cpu():
    cfg = profile("curate.yaml")
    assert cfg.analyze.stage_classes() == [SceneCutDetector, FlowMotion, CameraMotion, TextDetector]
    assert actor_resources(cfg, cluster_gpus=0) == Resources(cpus=0.9, gpus=0.0)
    assert actor_resources(cfg, cluster_gpus=8) == Resources(cpus=0.9, gpus=0.0)  # no stage uses one
    # Two whole-CPU actors on a 2-CPU node hang the job: the pool must leave room for a write task.
    assert cfg.ray.concurrency * actor_resources(cfg, 0).cpus + WRITE_TASK_CPUS <= 2
    lpips = profile("curate.yaml", "analyze.motion.backend=lpips", "analyze.ocr.enabled=false")
    assert lpips.analyze.stage_classes() == [SceneCutDetector, LpipsMotion, CameraMotion]
    assert actor_resources(lpips, cluster_gpus=1) == Resources(cpus=0.9, gpus=0.25)


def test_full_profile_asks_for_the_aesthetic_gpu_share_only_where_there_are_gpus():
    cfg = profile("curate_full.yaml")
    assert cfg.analyze.stage_classes() == [SceneCutDetector, LpipsMotion, CameraMotion, TextDetector, AestheticScorer,
                                             ClipScorer]
    assert cfg.analyze.resources() == Resources(cpus=1.0, gpus=0.5)
    assert actor_resources(cfg, cluster_gpus=0) == Resources(cpus=0.9, gpus=0.0)
    assert actor_resources(cfg, cluster_gpus=2) == Resources(cpus=0.9, gpus=0.5)


def test_config_overrides_win():
    cfg = profile("curate_full.yaml", "ray.num_cpus=0.5", "ray.num_gpus=1")
    assert actor_resources(cfg, cluster_gpus=0) == Resources(cpus=0.5, gpus=1.0)
    cpu_only = profile("curate_full.yaml", "ray.num_gpus=0")
    assert actor_resources(cpu_only, cluster_gpus=4) == Resources(cpus=0.9, gpus=0.0)
