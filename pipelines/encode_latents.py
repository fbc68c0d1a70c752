"""Encode kept clips of curated shards into latent shards for DiT training (Ray batch job).

    python pipelines/encode_latents.py --config pipelines/configs/dit_encode.yaml shards=... out=...
    ray job submit -- python pipelines/encode_latents.py --config ...

One actor holds the WF-VAE and the text encoder; decoding happens inside it so each clip is
read once. Errors are listed in <out>/encode_errors.json; the index goes to <out>/index/.
"""

import argparse
import json
from pathlib import Path

import pyarrow as pa
from soraplan.core.config import load_config
from soraplan.core.ray_session import init_ray
from soraplan.core.schema import STATUS_KEPT, read_clip_table
from soraplan.model.dit.data import write_index
from soraplan.model.dit.encode import EncodeConfig, LatentEncoder


class RayLatentEncoder:
    def __init__(self, cfg: EncodeConfig) -> None:
        self.encode = LatentEncoder(cfg)

    def __call__(self, batch: pa.Table) -> pa.Table:
        results = self.encode(batch.to_pylist())
        return pa.Table.from_pylist([{"result": json.dumps(r)} for r in results])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML file of EncodeConfig")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides")
    args = parser.parse_args()
    cfg = load_config(EncodeConfig, args.config, args.overrides)

    clips = read_clip_table(cfg.shards, status=STATUS_KEPT)
    if clips.num_rows == 0:
        raise SystemExit(f"no kept clips in {cfg.shards}; set shards=<curated output dir>")
    ray = init_ray(cfg.ray_address)
    results = (
        ray.data.from_arrow(clips)
        .map_batches(RayLatentEncoder, fn_constructor_args=(cfg,), batch_size=cfg.batch_size,
                     batch_format="pyarrow", concurrency=1, num_cpus=1,
                     num_gpus=1 if cfg.device.startswith("cuda") else 0)
        .take_all()
    )
    rows = [json.loads(r["result"]) for r in results]
    done = [{k: v for k, v in r.items() if k != "error"} for r in rows if r["error"] is None]
    errors = {r["clip_id"]: r["error"] for r in rows if r["error"] is not None}
    if done:
        write_index(cfg.out, done, "encoded")
    (Path(cfg.out) / "encode_errors.json").write_text(json.dumps(errors, indent=2))
    print(json.dumps({"encoded": len(done), "errors": len(errors), "out": cfg.out}))


if __name__ == "__main__":
    main()
