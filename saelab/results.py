"""One shape for every result saelab returns.

A `Result` has
- `.table`: a pandas DataFrame with the full-precision values (what code should read);
- `.summary()`: one line of text saying what the result shows;
- `repr(result)`: the summary above the table as text; `_repr_html_()`: the same as HTML (how a
  notebook shows it);
- `.plot()` where a figure reads better (a matplotlib Figure), else no such method.

Displayed numbers (repr, HTML, summaries) use `DISPLAY_DIGITS` = 3 significant digits through the
one formatter `fmt`, so committed notebook outputs do not change in the 4th digit when the same
seed runs on another CPU; the table itself keeps every digit.

A result type subclasses `Result` and sets `table` (a dataclass field or a property) and
`summary()` (and may override `shown_table()` to show the table differently from what it
holds); a dataclass subclass uses `@dataclass(repr=False)` to keep this `__repr__`. A class
attribute `caption` (a sentence shown under the table) explains units or conventions.
"""
from __future__ import annotations

import html
import math
import numbers

import pandas as pd

DISPLAY_DIGITS = 3


def fmt(value) -> str:
    """A number as displayed: floats at DISPLAY_DIGITS significant digits (no exponent between 1e-4
    and 1e6: 1234.5 -> "1230", 0.012345 -> "0.0123"), ints in full, anything else as str()."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    value = float(value)
    if not math.isfinite(value) or value == 0:
        return str(value) if not math.isfinite(value) else "0"
    rounded = float(f"{value:.{DISPLAY_DIGITS}g}")
    if 1e-4 <= abs(rounded) < 1e6:
        decimals = max(0, DISPLAY_DIGITS - 1 - math.floor(math.log10(abs(rounded))))
        return f"{rounded:.{decimals}f}"
    return f"{value:.{DISPLAY_DIGITS - 1}e}"


def change(value) -> str:
    """A signed change in words: 0.0743 -> "rises by 0.0743", -0.0743 -> "falls by 0.0743", 0 -> "does not change"."""
    value = float(value)
    if value == 0 or not math.isfinite(value):
        return "does not change" if value == 0 else f"changes by {fmt(value)}"
    return f"{'rises' if value > 0 else 'falls'} by {fmt(abs(value))}"


def pct(fraction) -> str:
    """A fraction as a displayed percentage: 0.12345 -> "12.3%"."""
    return f"{fmt(100 * float(fraction))}%"


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of `table` with every float cell formatted by `fmt` (for display only)."""
    shown = table.copy()
    for column in shown.columns:
        values = shown[column]
        if values.dtype.kind == "f" or values.dtype == object:
            shown[column] = values.map(_display_cell)
    return shown


def _display_cell(value):
    is_float = isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral))
    return fmt(value) if is_float else value


class Result:
    """The protocol every saelab result follows: `.table`, `.summary()`, repr and HTML display."""

    table: pd.DataFrame
    caption: str = ""

    def summary(self) -> str:
        """One line saying what the result shows (each result type overrides it)."""
        return type(self).__name__

    def shown_table(self) -> pd.DataFrame:
        """The table as displayed, before numbers are formatted (a subclass may drop or reword columns)."""
        return self.table

    def table_text(self) -> str:
        """The shown table as aligned text, numbers at DISPLAY_DIGITS significant digits."""
        table = self.shown_table()
        return format_table(table).to_string(index=False) if len(table) else ""

    def table_html(self) -> str:
        """The shown table as an HTML fragment, numbers at DISPLAY_DIGITS significant digits."""
        table = self.shown_table()
        return format_table(table).to_html(index=False, border=0) if len(table) else ""

    def __repr__(self) -> str:
        parts = [self.summary(), self.table_text(), self.caption]
        return "\n".join(p for p in parts if p)

    def _repr_html_(self) -> str:
        caption = (f"<p style='font-size:smaller; color:#555'>{html.escape(self.caption)}</p>"
                   if self.caption else "")
        return f"<p><b>{html.escape(self.summary())}</b></p>{self.table_html()}{caption}"
