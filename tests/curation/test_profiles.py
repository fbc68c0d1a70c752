from soraplan.core.config import dump_yaml, load_config
from soraplan.curation.pipeline import CurateConfig


def test_shipped_curate_configs_round_trip(tmp_path):
    for name in ("curate.yaml", "curate_full.yaml"):
        cfg = load_config(CurateConfig, f"pipelines/configs/{name}", ["analyze.motion.backend=lpips"])
        assert cfg.analyze.motion.backend == "lpips"
        dumped = tmp_path / name
        dump_yaml(cfg, dumped)
        assert load_config(CurateConfig, dumped) == cfg
