"""CTC decoding in NumPy: greedy (best path) and prefix beam search. Blank is index 0.

Both take per-frame scores of shape (T, V): logits or log-probabilities (a log-softmax is
applied, so either works) and return label ids with repeats collapsed and blanks removed.
"""
import math
from collections import defaultdict
from typing import Dict, List, Tuple

import numpy as np

BLANK = 0


def log_softmax(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, np.float64)
    shifted = scores - scores.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def frame_scores(scores) -> np.ndarray:
    """`scores` as a (T, V) array; a batch or a single frame is a ValueError (decoded, a batch
    gave one frame's argmax per utterance), and so are NaN or infinite scores (they decoded to nothing)."""
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"CTC decoding takes one utterance's scores, shape (frames, vocabulary of 2 or more), "
                         f"not {scores.shape}; decode a batch one utterance at a time")
    if not np.isfinite(scores).all():
        raise ValueError("CTC scores hold NaN or infinite values")
    return scores


def greedy_decode(scores: np.ndarray) -> List[int]:
    """The most likely label per frame, repeats merged, blanks dropped."""
    best = np.argmax(frame_scores(scores), axis=-1)
    ids, previous = [], BLANK
    for label in best.tolist():
        if label != previous and label != BLANK:
            ids.append(label)
        previous = label
    return ids


def _log_add(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    high, low = (a, b) if a > b else (b, a)
    return high + math.log1p(math.exp(low - high))


def prefix_beam_search(scores: np.ndarray, beam_width: int = 8, prune: float = -12.0) -> List[int]:
    """The most probable label sequence summed over all its alignments, kept to `beam_width` prefixes.

    Each prefix keeps two log-probabilities: ending in a blank and ending in its last label, so
    "a a" (two labels) and "aa" (one, said over two frames) are told apart. Labels whose frame
    log-probability is below `prune` are not extended.
    """
    log_probs = log_softmax(frame_scores(scores))
    beams: Dict[Tuple[int, ...], Tuple[float, float]] = {(): (0.0, -math.inf)}  # prefix: (blank, non-blank)
    for frame in log_probs:
        candidates = [int(c) for c in np.nonzero(frame >= prune)[0]] or [int(np.argmax(frame))]
        following: Dict[Tuple[int, ...], List[float]] = defaultdict(lambda: [-math.inf, -math.inf])
        for prefix, (p_blank, p_label) in beams.items():
            total = _log_add(p_blank, p_label)
            for c in candidates:
                p = float(frame[c])
                if c == BLANK:
                    entry = following[prefix]
                    entry[0] = _log_add(entry[0], total + p)
                    continue
                extended = prefix + (c,)
                entry = following[extended]
                if prefix and prefix[-1] == c:
                    entry[1] = _log_add(entry[1], p_blank + p)   # a repeat needs a blank in between
                    same = following[prefix]
                    same[1] = _log_add(same[1], p_label + p)      # or it is the same label held
                else:
                    entry[1] = _log_add(entry[1], total + p)
        ranked = sorted(following.items(), key=lambda item: _log_add(*item[1]), reverse=True)
        beams = {prefix: (p[0], p[1]) for prefix, p in ranked[:beam_width]}
    best = max(beams.items(), key=lambda item: _log_add(*item[1]))
    return list(best[0])


def decode(scores: np.ndarray, beam_width: int = 0) -> List[int]:
    """Greedy for beam_width 0 or 1, prefix beam search for 2 or more."""
    check_beam_width(beam_width)
    return greedy_decode(scores) if beam_width <= 1 else prefix_beam_search(scores, beam_width)


def check_beam_width(beam_width: int) -> None:
    """A beam width is 0 or 1 (greedy) or more; anything else is refused, not read as greedy."""
    if isinstance(beam_width, bool) or not isinstance(beam_width, (int, np.integer)) or beam_width < 0:
        raise ValueError(f"beam width {beam_width!r}: need 0 or 1 (greedy) or a larger whole number")
