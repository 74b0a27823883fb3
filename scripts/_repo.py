"""What the results scripts share: the repository root, and paths written into docs/ relative to it."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# qat_results.py writes MODEL/<policy>_seed<i>, one run per fine-tuning seed; the other results
# scripts show the first seed's run.
MAIN_RUN = "_seed0"


def repo_relative(path) -> str:
    """`path` relative to the repository when inside it, so docs/ hold no path of this machine."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
