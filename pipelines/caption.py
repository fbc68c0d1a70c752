"""Entry point for `ray job submit -- python pipelines/caption.py --config ... --input ... --out ...`.

Same as the `soraplan-caption` console script; the job lives in soraplan.captioner.caption.
"""

from soraplan.captioner.caption import main

if __name__ == "__main__":
    main()
