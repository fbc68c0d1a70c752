"""`soraplan-vae train` for launchers that want a script path:

    deepspeed --num_gpus 8 pipelines/train_vae.py --config pipelines/configs/vae_wfvae_s.yaml [key=value ...]
    deepspeed --num_accelerators 2 pipelines/train_vae.py ...   # two CPU processes (gloo)

The trainer lives in soraplan.model.vae.train.
"""

import sys

from soraplan.model.vae.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
