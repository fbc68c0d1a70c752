import itertools
from collections import Counter

import pytest
from soraplan.model.dit.buckets import BucketConfig, latent_shape, plan_clip, resize_for_area
from soraplan.model.dit.sampler import BucketBatchSampler

CFG = BucketConfig(min_hxw=320 * 320, max_hxw=384 * 616, hw_stride=32, train_fps=16,
                   num_frames=93, min_num_frames=29)


def test_area_is_clamped_and_aspect_kept():
    w, h = resize_for_area(1920, 1080, CFG.min_hxw, CFG.max_hxw)
    assert abs(w * h - CFG.max_hxw) < 1000 and abs(w / h - 16 / 9) < 0.01
    w, h = resize_for_area(160, 90, CFG.min_hxw, CFG.max_hxw)
    assert abs(w * h - CFG.min_hxw) < 1000
    assert resize_for_area(480, 360, CFG.min_hxw, CFG.max_hxw) == (480, 360)  # area in range


def test_video_plan_crops_to_stride_resamples_and_picks_1_plus_4n():
    plan = plan_clip(640, 360, num_frames=300, fps=30.0, cfg=CFG)  # 10 s
    assert plan.bucket == (93, 352, 640) and plan.resize == (640, 360)  # area already in range
    t, h, w = plan_clip(1920, 1080, 300, 30.0, CFG).bucket
    assert h % 32 == 0 and w % 32 == 0 and h * w <= CFG.max_hxw
    assert plan.times_s[1] - plan.times_s[0] == pytest.approx(1 / 16)
    # 3 s at 30 fps -> 48 frames at 16 fps -> largest 1 + 4n <= 48 is 45.
    assert plan_clip(640, 360, 90, 30.0, CFG).bucket[0] == 45
    # 1.5 s -> 24 frames at 16 fps: shorter than min_num_frames, skipped.
    assert plan_clip(640, 360, 45, 30.0, CFG) is None
    # A 12 fps clip keeps its own frame rate: 40 frames -> 37.
    assert plan_clip(640, 360, 90, 0.0, CFG) is None  # unknown frame rate
    slow = plan_clip(640, 360, 40, 12.0, CFG)
    assert slow.bucket[0] == 37 and slow.times_s[1] == pytest.approx(1 / 12)


def test_images_are_single_frame_samples():
    plan = plan_clip(1024, 768, num_frames=1, fps=0.0, cfg=CFG)
    assert plan.bucket[0] == 1 and plan.times_s == (0.0,)
    assert latent_shape(plan.bucket, 4, 8) == (1, plan.bucket[1] // 8, plan.bucket[2] // 8)
    assert latent_shape((93, 352, 640), 4, 8) == (24, 44, 80)


def make_buckets():
    # 3 shapes with 40, 17, 5 samples, interleaved.
    sizes = {"a": 40, "b": 17, "c": 5}
    out = []
    for i in range(max(sizes.values())):
        for name, n in sizes.items():
            if i < n:
                out.append(name)
    return out


def test_batches_have_one_shape_and_cover_buckets_without_repeats():
    buckets = make_buckets()
    sampler = BucketBatchSampler(buckets, global_batch=8, seed=1, min_bucket_batches=1)
    assert "c" in sampler.dropped  # 5 < 8 samples
    assert sampler.batches_per_epoch == 40 // 8 + 17 // 8
    epoch = [sampler.global_batch_at(s) for s in range(sampler.batches_per_epoch)]
    seen = Counter(i for b in epoch for i in b)
    assert max(seen.values()) == 1
    assert all(len({buckets[i] for i in b}) == 1 for b in epoch)
    order = [buckets[b[0]] for b in epoch]
    assert order != sorted(order) and order != sorted(order, reverse=True)  # mixed across buckets
    # A larger multiple drops bucket b (17 < 3 * 8) as well.
    assert set(BucketBatchSampler(buckets, 8, min_bucket_batches=3).buckets) == {"a"}
    # Epochs differ.
    assert sampler.global_batch_at(0) != sampler.global_batch_at(sampler.batches_per_epoch)


def test_ranks_split_each_global_batch_with_the_same_shape():
    buckets = make_buckets()
    ranks = [BucketBatchSampler(buckets, 8, rank=r, world_size=2, seed=3) for r in range(2)]
    single = BucketBatchSampler(buckets, 8, seed=3)
    for step in range(20):
        a, b = ranks[0].batch_at(step), ranks[1].batch_at(step)
        assert len(a) == len(b) == 4
        assert a + b == single.global_batch_at(step)
        assert {buckets[i] for i in a + b} == {buckets[a[0]]}


def test_resume_continues_after_last_consumed_batch():
    buckets = make_buckets()
    full = BucketBatchSampler(buckets, 4, seed=7)
    uninterrupted = list(itertools.islice(iter(full), 25))

    first = BucketBatchSampler(buckets, 4, seed=7)
    consumed = list(itertools.islice(iter(first), 11))
    state = first.state_dict()
    resumed = BucketBatchSampler(buckets, 4, seed=7)
    resumed.load_state_dict(state)
    rest = list(itertools.islice(iter(resumed), 14))
    assert consumed + rest == uninterrupted
    with pytest.raises(ValueError):
        BucketBatchSampler(buckets, 4, seed=8).load_state_dict(state)
