"""What the results scripts share: the repository root, and paths written into docs/ relative to it."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def repo_relative(path) -> str:
    """`path` relative to the repository when inside it, so docs/ hold no path of this machine."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
