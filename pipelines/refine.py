"""Entry point for `soraplan-refine` under launchers that want a script path, e.g.
`deepspeed --num_gpus 8 pipelines/refine.py train --config pipelines/configs/refine_llama3.yaml`.

The logic lives in soraplan.captioner.refine.
"""

from soraplan.captioner.refine.cli import main

if __name__ == "__main__":
    main()
