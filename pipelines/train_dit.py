"""`soraplan-dit train` for launchers that want a script path:

    deepspeed --num_gpus 8 pipelines/train_dit.py --config pipelines/configs/dit_2.7b.yaml [key=value ...]
    torchrun --nproc_per_node 2 pipelines/train_dit.py --config pipelines/configs/dit_tiny_cpu.yaml ...

The trainer lives in soraplan.model.dit.train.
"""

import sys

from soraplan.model.dit.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
