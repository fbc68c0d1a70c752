"""The LAION aesthetic stage with a tiny open_clip model and a random head, loaded from tmp files."""

from collections import defaultdict

import numpy as np
import pytest

from soraplan.curation.aesthetic import AestheticConfig, pick_frames
from soraplan.curation.analyze import AnalyzeConfig, ClipAnalyzer
from soraplan.core.inputs import InputClip
from soraplan.curation.motion import MotionConfig
from soraplan.curation.ocr import OcrConfig

@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory, save_tiny_clip):
    """A tiny open_clip config, its random weights and a random LAION head, all as files."""
    return save_tiny_clip(tmp_path_factory.mktemp("aesthetic"), "tiny-aesthetic-clip",
                          {"context_length": 8, "vocab_size": 64, "width": 64, "heads": 1, "layers": 1})


def tiny_config(tiny_weights, **overrides) -> AestheticConfig:
    values = dict(enabled=True, clip_model="tiny-aesthetic-clip", clip_model_config=tiny_weights["config"],
                  clip_pretrained=tiny_weights["clip"], mlp_path=tiny_weights["mlp"])
    return AestheticConfig(**{**values, **overrides})


def test_weights_load_and_batched_equals_one_by_one(tiny_weights):
    import torch
    from safetensors.torch import load_file

    scorer = tiny_config(tiny_weights, batch_size=3).build()
    saved = load_file(tiny_weights["clip"])
    assert torch.equal(scorer.visual.conv1.weight, saved["visual.conv1.weight"])
    assert torch.equal(scorer.mlp.layers[7].weight, load_file(tiny_weights["mlp"])["layers.7.weight"])
    rng = np.random.default_rng(0)
    frames = [scorer.prepare(rng.integers(0, 255, (90, 160, 3), dtype=np.uint8)) for _ in range(7)]
    batched = scorer.process(frames)
    assert batched.shape == (7,) and np.ptp(batched) > 0
    one_by_one = np.concatenate([scorer.process([f]) for f in frames])
    assert np.allclose(batched, one_by_one, atol=1e-5)


def test_missing_weights_fail_naming_the_key(tiny_weights, tmp_path):
    with pytest.raises(FileNotFoundError, match="analyze.aesthetic.mlp_path"):
        tiny_config(tiny_weights, mlp_path=str(tmp_path / "missing.safetensors")).build()
    with pytest.raises(FileNotFoundError, match="analyze.aesthetic.clip_pretrained"):
        tiny_config(tiny_weights, clip_pretrained=str(tmp_path / "missing_clip.safetensors")).build()


def test_pick_frames_at_10_50_90_percent():
    times = [i * 0.5 for i in range(20)]  # 2 fps over 10 s
    assert pick_frames(times, 2.0, 7.0, (0.1, 0.5, 0.9)) == [5, 9, 13]  # 2.5 s, 4.5 s, 6.5 s
    assert pick_frames(times, 20.0, 21.0, (0.5,)) == []


def analyzer(tiny_weights, **aesthetic) -> ClipAnalyzer:
    return ClipAnalyzer(AnalyzeConfig(motion=MotionConfig(flow_min=0.0), ocr=OcrConfig(enabled=False),
                                      aesthetic=tiny_config(tiny_weights, **aesthetic)))


def test_segments_get_the_mean_of_three_frames_and_low_scores_reject(tiny_weights, media):
    clip = InputClip(source_id="three", path=str(media["three_shots"]))
    keep_all = analyzer(tiny_weights, min_score=-1e9)
    rows = keep_all.analyze(clip)
    assert [r["status"] for r in rows] == ["kept"] * 3
    keep_all.decode(clip, defaultdict(float))
    scorer = keep_all.stage("aesthetic")  # holds the frames it buffered during the pass
    for row in rows:  # the stored score is the mean over the segment's 10/50/90% frames
        picks = pick_frames(scorer.times, row["start_s"], row["end_s"], (0.1, 0.5, 0.9))
        assert len(set(picks)) == 3
        expected = scorer.process([scorer.images[k] for k in picks]).mean()
        assert row["aesthetic_score"] == pytest.approx(expected, abs=1e-5)
    threshold = float(np.median([r["aesthetic_score"] for r in rows]))
    strict = analyzer(tiny_weights, min_score=threshold).analyze(clip)
    for before, after in zip(rows, strict):
        low = before["aesthetic_score"] < threshold
        assert (after["reject_reasons"] == ["low_aesthetic"]) == low
        assert after["status"] == ("rejected" if low else "kept")
    assert "aesthetic" in strict[0]["stage_seconds"]


def test_aesthetic_runs_last_and_skips_rejected_segments(tiny_weights, media):
    rows = analyzer(tiny_weights, min_score=-1e9).analyze(InputClip(source_id="s", path=str(media["short_shot"])))
    short = [r for r in rows if r["reject_reasons"] == ["too_short"]]
    assert short and all(r["aesthetic_score"] is None for r in short)
    assert all(r["aesthetic_score"] is not None for r in rows if r["status"] == "kept")


def test_scores_flow_into_the_shards_and_the_funnel(tiny_weights, media, tmp_path):
    import ray

    from soraplan.core.ray_session import RayConfig
    from soraplan.core.schema import read_clip_table
    from soraplan.curation.pipeline import CurateConfig, run

    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("moving", "short_shot"):
        (videos / f"{name}.mp4").symlink_to(media[name])
    cfg = CurateConfig(input=str(videos), out=str(tmp_path / "out"), allow_outside_root=True,
                       analyze=analyzer(tiny_weights, min_score=-1e9).cfg,
                       ray=RayConfig(concurrency=1, local_num_cpus=2))
    try:
        summary = run(cfg)
    finally:
        ray.shutdown()
    rows = read_clip_table(tmp_path / "out").to_pylist()
    kept = [r for r in rows if r["status"] == "kept"]
    assert kept and all(isinstance(r["aesthetic_score"], float) for r in kept)
    funnel = summary["stages"]["aesthetic"]
    assert funnel["in"] == funnel["passed"] == len(kept)


def test_dtype_auto_takes_bf16_only_where_the_hardware_multiplies_it():
    from soraplan.curation.aesthetic import cpu_has_bf16_matrix_units, resolve_dtype

    sapphire_rapids = "processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
    cascade_lake_bf16 = "processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16\n"  # vector bf16 only
    graviton3 = "processor\t: 0\nFeatures\t: fp asimd sve i8mm bf16\n"
    assert cpu_has_bf16_matrix_units(sapphire_rapids) and cpu_has_bf16_matrix_units(graviton3)
    assert not cpu_has_bf16_matrix_units(cascade_lake_bf16) and not cpu_has_bf16_matrix_units("")
    assert resolve_dtype("auto", on_gpu=True) == "bfloat16"
    assert resolve_dtype("auto", on_gpu=True, gpu_has_bf16=False) == "float16"
    assert resolve_dtype("float32", on_gpu=True) == "float32"
    assert resolve_dtype("auto", on_gpu=False) == ("bfloat16" if cpu_has_bf16_matrix_units() else "float32")


def test_bf16_scores_stay_close_to_fp32(tiny_weights):
    import torch

    rng = np.random.default_rng(1)
    fp32 = tiny_config(tiny_weights, dtype="float32").build()
    bf16 = tiny_config(tiny_weights, dtype="bfloat16").build()
    assert fp32.visual.conv1.weight.dtype == torch.float32 and bf16.visual.conv1.weight.dtype == torch.bfloat16
    frames = [fp32.prepare(rng.integers(0, 255, (90, 160, 3), dtype=np.uint8)) for _ in range(4)]
    (a, ea), (b, eb) = fp32.process(frames, with_embeddings=True), bf16.process(frames, with_embeddings=True)
    assert b.dtype == np.float64 and np.abs(a - b).max() < 0.05 * max(np.abs(a).max(), 1e-3)
    assert (ea * eb).sum(axis=1).min() > 0.99  # unit embeddings: cosine similarity
