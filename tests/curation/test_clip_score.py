"""The clip_score stage: caption-frame cosine in CLIP space from the aesthetic stage's image
embeddings, with a tiny random open_clip model (full-size vocabulary, as its tokenizer needs)
and a random LAION head, saved to files and loaded back."""


import pytest

from soraplan.core.config import ConfigError
from soraplan.core.inputs import InputClip
from soraplan.curation.aesthetic import AestheticConfig, pick_frames
from soraplan.curation.analyze import AnalyzeConfig, ClipAnalyzer
from soraplan.curation.clip_score import ClipScoreConfig
from soraplan.curation.motion import MotionConfig
from soraplan.curation.ocr import OcrConfig

@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory, save_tiny_clip):
    # The text tower tokenizes with open_clip's real tokenizer: its full vocabulary.
    return save_tiny_clip(tmp_path_factory.mktemp("clip_score"), "tiny-text-clip",
                          {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1})


def analyzer(tiny_weights, clip_score: bool = True, **score) -> ClipAnalyzer:
    aesthetic = AestheticConfig(enabled=True, clip_model="tiny-text-clip", clip_model_config=tiny_weights["config"],
                                clip_pretrained=tiny_weights["clip"], mlp_path=tiny_weights["mlp"], min_score=-1e9)
    return ClipAnalyzer(AnalyzeConfig(motion=MotionConfig(flow_min=0.0), ocr=OcrConfig(enabled=False),
                                      aesthetic=aesthetic, clip_score=ClipScoreConfig(enabled=clip_score, **score)))


def test_clip_score_is_the_mean_caption_frame_cosine_from_one_image_pass(tiny_weights, media):
    import open_clip
    from safetensors.torch import load_file

    clip = InputClip(source_id="three", path=str(media["three_shots"]), caption="a textured scene pans")
    scored = analyzer(tiny_weights)
    frames_seen = []
    scored.stage("aesthetic").visual.register_forward_hook(lambda m, args, out: frames_seen.append(len(out)))
    rows = scored.analyze(clip)
    assert sum(frames_seen) == 3 * len(rows)  # the 10/50/90% frames of each segment, once
    assert all(-1 <= r["clip_score"] <= 1 for r in rows)
    # The same cosine from a CLIP built independently from the saved weights.
    model = open_clip.create_model("tiny-text-clip", pretrained=None)
    model.load_state_dict(load_file(tiny_weights["clip"]))
    text = model.encode_text(open_clip.get_tokenizer("tiny-text-clip")([clip.caption]), normalize=True)
    text = text.detach().numpy()[0]
    aesthetic = scored.stage("aesthetic")
    for row in rows:
        picks = pick_frames(aesthetic.times, row["start_s"], row["end_s"], (0.1, 0.5, 0.9))
        _, images = aesthetic.process([aesthetic.images[k] for k in picks], with_embeddings=True)
        assert row["clip_score"] == pytest.approx(float((images @ text).mean()), abs=1e-5)
    other = analyzer(tiny_weights).analyze(InputClip(source_id="o", path=str(media["three_shots"]),
                                                     caption="a red car at night"))
    assert [r["clip_score"] for r in other] != pytest.approx([r["clip_score"] for r in rows])


def test_minimum_and_missing_caption(tiny_weights, media):
    clip = InputClip(source_id="m", path=str(media["moving"]), caption="anything")
    (row,) = analyzer(tiny_weights, min_score=1.0).analyze(clip)  # no cosine reaches 1
    assert row["reject_reasons"] == ["low_clip_score"]
    (row,) = analyzer(tiny_weights).analyze(InputClip(source_id="n", path=str(media["moving"])))
    assert row.get("clip_score") is None and row["aesthetic_score"] is not None


def test_clip_score_needs_the_aesthetic_stage():
    with pytest.raises(ConfigError, match="aesthetic.enabled"):
        AnalyzeConfig(clip_score=ClipScoreConfig(enabled=True)).validate()
