"""What the results scripts share: the repository root, each fine-tuning seed's run, paths written
into docs/ relative to it, the results of models a rerun did not touch, the --docs/--report-only
options and writing a report's JSON and Markdown, re-rendering a table from its JSON, the standard
error of a mean over seeds, and the caveat on measures a table took the old way."""
import json
from pathlib import Path

import numpy as np
from edgeasr.files import write_bytes_atomic, write_json_atomic

REPO = Path(__file__).resolve().parents[1]
# qat_results.py writes MODEL/<policy>_seed<i>, one run per fine-tuning seed; the other results
# scripts show the first seed's run.
MAIN_RUN = "_seed0"
# How a row's measures were taken (its "measured" entry); rows without one were taken the old
# way, and their tables say so (`measures_caveat`) until the script is rerun.
MEASURES = {"float_reference": "distinct weights", "int4_share": "layer weights"}


def seed_runs(model_runs: Path, policy: str) -> list:
    """The `<policy>_seed<i>` runs under MODEL's folder that finished training, in seed order."""
    runs = [p for p in Path(model_runs).glob(f"{policy}_seed*") if (p / "model.keras").is_file()]
    return [p.name for p in sorted(runs, key=lambda p: seed_of(p.name))]


def seed_of(run: str) -> int:
    """The fine-tuning seed of a `<policy>_seed<i>` run."""
    return int(run.rsplit("_seed", 1)[1])


def repo_relative(path) -> str:
    """`path` relative to the repository when inside it, so docs/ hold no path of this machine."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def previous_rows(previous_path: Path, key: str, ran) -> list:
    """The rows under `key` of a results JSON written before, less those of the models in `ran`: a
    script rerun for some of its --models keeps the others' results instead of dropping them."""
    if not Path(previous_path).is_file():
        return []
    previous = json.loads(Path(previous_path).read_text())
    return [row for row in previous.get(key) or [] if row["model"] not in set(ran)]


def with_previous_rows(previous_path: Path, key: str, rows: list, ran, models) -> list:
    """`rows` of the models in `ran` and the previous JSON's rows of the other models, in model order."""
    return in_model_order(previous_rows(previous_path, key, ran) + rows, models)


def in_model_order(rows: list, models) -> list:
    """Rows grouped by model in the order of `models` (others last), each model's rows kept in order."""
    order = {model: i for i, model in enumerate(models)}
    return sorted(rows, key=lambda row: order.get(row["model"], len(order)))


def add_report_options(parser, name: str) -> None:
    """--docs and --report-only for a script that writes docs/NAME.md and docs/NAME.json."""
    parser.add_argument("--docs", type=Path, default=REPO / "docs",
                        help=f"Folder {name}.md and .json are written to (default: docs).")
    parser.add_argument("--report-only", action="store_true", help=f"Only rewrite {name}.md from its JSON in --docs.")


def write_report(docs: Path, name: str, summary: dict, write_markdown) -> None:
    """docs/NAME.json and the docs/NAME.md that `write_markdown(summary, docs)` writes."""
    docs.mkdir(parents=True, exist_ok=True)
    write_json_atomic(docs / f"{name}.json", summary)
    write_markdown(summary, docs)


def rewrite_markdown(docs: Path, name: str, markdown) -> None:
    """docs/NAME.md rendered again by `markdown` from the docs/NAME.json a run wrote before."""
    write_bytes_atomic(Path(docs) / f"{name}.md", markdown(read_summary(docs, name)).encode())


def read_summary(docs: Path, name: str, option: str = "--markdown-only") -> dict:
    """The docs/NAME.json a run wrote before (for re-rendering its reports with `option`)."""
    return read_saved(Path(docs) / f"{name}.json", option)


def read_saved(source: Path, option: str) -> dict:
    """A JSON a run wrote before; a missing one stops the script with one line, not a traceback."""
    if not Path(source).is_file():
        raise SystemExit(f"{source}: missing; run the script without {option} first")
    return json.loads(Path(source).read_text())


def standard_error(values):
    """Standard error of the mean of `values` (e.g. per-seed paired differences); None below two."""
    values = np.asarray(values, dtype=float)
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) >= 2 else None


def measured(*keys) -> dict:
    """The "measured" entry of a row whose `keys` were taken the current way."""
    return {"measured": {key: MEASURES[key] for key in keys}}


OLD_WAY = {
    "float_reference": "Float sizes here are of an untrained twin of each model, which the converter stores smaller "
                       "than the trained model (identical zero biases and unit scales kept once), so the ratios "
                       "understate the reduction by a few percent. `edgeasr convert` now sizes the float reference "
                       "with distinct weights (`float_tflite_bytes` in converters/stock.py gives the measured "
                       "differences); a rerun of this script gives those figures.",
    "int4_share": "INT4 shares here also counted 2-D constants that are not layer weights (the Conformer's attention "
                  "masks) as unpacked weight bytes, so they understate the packed share. `edgeasr convert` now "
                  "counts the filters of FULLY_CONNECTED, CONV_2D and DEPTHWISE_CONV_2D only (`weight_storage` in "
                  "converters/flatbuffer.py); a rerun of this script gives those figures.",
}


def measures_caveat(rows, *keys) -> list:
    """Markdown lines for tables whose rows took `keys` the old way (OLD_WAY says how)."""
    rows = list(rows)
    old = [key for key in keys if not all((row.get("measured") or {}).get(key) == MEASURES[key] for row in rows)]
    return [line for key in old for line in (OLD_WAY[key], "")]
