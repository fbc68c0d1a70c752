"""Where the shared development set is, for the benchmark scripts (tests never need it).

It lives in `../shared/devset` next to the main checkout. A git worktree can sit elsewhere, so
the main checkout is also found through git's common directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _main_checkout() -> Path | None:
    try:
        common = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-common-dir"], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return Path(common).parent


def devset_dir() -> Path:
    candidates = [REPO.parent / "shared" / "devset"]
    main = _main_checkout()
    if main is not None:
        candidates.append(main.parent / "shared" / "devset")
    for candidate in candidates:
        if (candidate / "labels.json").exists():
            return candidate
    sys.exit(f"devset not found at {' or '.join(map(str, dict.fromkeys(candidates)))}; "
             "these figures need ../shared/devset next to the main checkout")


def labels() -> dict:
    return json.loads((devset_dir() / "labels.json").read_text())
