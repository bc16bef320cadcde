"""Text tables for the notebooks' printed results: one formatter for every table."""

import math
from collections.abc import Mapping, Sequence

from fcn_lesson.core.geometry import Stage

# Column names for the keys the lesson's tables use.
HEADERS = {"variant": "variant", "pixel_acc": "pixel acc", "mean_acc": "mean acc",
           "mean_iou": "mean IU", "fw_iou": "f.w. IU", "boundary_acc": "boundary acc",
           "params": "params", "gflops": "GFLOPs", "latency_ms": "latency (ms)"}


def format_table(rows: Sequence[dict], digits: int = 1, headers: Mapping[str, str] | None = None) -> str:
    """Rows of dicts (same keys) as an aligned text table: floats with `digits` decimals,
    ints with thousands separators, NaN as "-". `headers` renames columns (see HEADERS)."""
    if not rows:
        raise ValueError("no rows to format")
    keys = list(rows[0])
    headers = {**HEADERS, **(headers or {})}

    def cell(v) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.{digits}f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    lines = [[headers.get(k, k) for k in keys]] + [[cell(row[k]) for k in keys] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(keys))]
    # Words line up on the left, numbers (and "89.1 / 90.3", "128 x 128") on the right.
    left = [all(line[i][:1].isalpha() for line in lines[1:]) for i in range(len(keys))]
    text = ["  ".join(c.ljust(w) if is_left else c.rjust(w)
                      for c, w, is_left in zip(line, widths, left, strict=True)).rstrip() for line in lines]
    text.insert(1, "-" * len(text[0]))
    return "\n".join(text)


def format_stage_table(rows: Sequence[Stage]) -> str:
    """`stage_table` rows as an aligned text table ("-" where a layer is not a map)."""
    def text(v) -> str:
        return "-" if v is None else str(int(v) if float(v).is_integer() else float(v))

    return format_table([{"layer": row.name, "output (C, h, w)": " x ".join(map(str, row.shape)),
                          "stride": text(row.stride), "receptive field": text(row.receptive_field),
                          "centre of cell 0": text(row.center)} for row in rows])
