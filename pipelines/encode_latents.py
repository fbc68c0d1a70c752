"""`soraplan-dit encode` for `ray job submit -- python pipelines/encode_latents.py --config ...`.

The job lives in soraplan.model.dit.encode.
"""

import sys

from soraplan.model.dit.cli import main

if __name__ == "__main__":
    main(["encode", *sys.argv[1:]])
