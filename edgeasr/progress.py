"""Progress bars for long work: redrawn in place on a terminal, a line every half minute in a log."""
import sys

from tqdm import tqdm

LOG_INTERVAL_S = 30.0


def progress_bar(iterable=None, enabled: bool = True, **kwargs) -> tqdm:
    """tqdm on stderr. When stderr is a log file or a pipe (CI, nohup, `| tee`), it is updated at
    most every LOG_INTERVAL_S: a redraw per step filled such logs with tens of kilobytes per bar."""
    interactive = sys.stderr.isatty()
    return tqdm(iterable, disable=not enabled, mininterval=0.1 if interactive else LOG_INTERVAL_S, **kwargs)
