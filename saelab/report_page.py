"""The report's page: `ReportPage` (the HTML report of `saelab run` and its files: tables as CSV, figures
as PNG embedded in the page), the column units it displays and the glossary it ends with."""
from __future__ import annotations

import html
from pathlib import Path

#: Column headers as displayed in the report (the CSV files keep the plain names).
UNITS = {"mse": "mse (per dimension)", "ce_loss_clean": "ce_loss_clean (nats/token)",
         "ce_loss_spliced": "ce_loss_spliced (nats/token)"}
GLOSSARY = (
    ("MSE per dimension (mse)", "the mean of (x - x_hat)^2 over rows and over the d_model dimensions, in squared "
     "activation units. SAELens reports the sum over dimensions: its MSE is this times d_model."),
    ("L1 (l1)", "the mean over rows of the sum of |f_i| over features f."),
    ("L0 (l0)", "the mean number of active features (f_i ≠ 0; for ReLU features, f_i > 0) per row: a count."),
    ("FVU (fvu)", "fraction of variance unexplained, sum (x - x_hat)^2 / sum (x - mean row)^2: 0 is perfect, 1 no "
     "better than always predicting the mean row; above 1, the reconstructions are farther from the rows than the "
     "mean row is (an SAE meeting rows unlike those it was fitted to)."),
    ("Explained variance (explained_variance)", "1 - FVU."),
    ("Dead fraction / dense fraction", "the share of features never active on the evaluation rows / active on more "
     "than 10% of them."),
    ("CE loss recovered (ce_loss_recovered)", "(CE_zeroed - CE_spliced) / (CE_zeroed - CE_clean), from the model's "
     "mean next-token cross-entropy in nats per token: clean, with the SAE's reconstruction spliced in "
     "(ce_loss_spliced) and with the activation zeroed. 1: the SAE costs nothing; 0: as bad as deleting the "
     "activation."),
    ("Steering (Part 7)", "adding alpha × d_i (the feature's decoder direction, raw units) to the activation at every "
     "position but BOS; alpha counts in units of the feature's top held-out activation. delta_logprob_top: the change "
     "in log P(next token is one of the feature's top promoted tokens), nats, mean over the prompt's positions."),
    ("Ablation (Part 8)", "removing f_i(x) × d_i from the real activation (the SAE's error term stays); delta_loss: the "
     "next-token loss with it removed minus without, nats per token, where the feature fires and where it does not."),
)


class ReportPage:
    """The HTML report and its files: tables as CSV, figures as PNG (embedded in the page as base64)."""

    def __init__(self, out: Path):
        self.out = out
        self.parts: list[str] = []
        (out / "figures").mkdir(exist_ok=True)
        (out / "tables").mkdir(exist_ok=True)

    def add(self, fragment: str) -> None:
        self.parts.append(fragment)

    def text(self, text: str, tag: str = "p") -> None:
        self.parts.append(f"<{tag}>{html.escape(text)}</{tag}>")

    def table(self, df, name: str, caption: str = "", index: bool = False) -> None:
        path = self.out / "tables" / f"{name}.csv"
        df.to_csv(path, index=index)
        from saelab.results import format_table
        shown = format_table(df).rename(columns=UNITS).to_html(index=index, border=0, classes="data", na_rep="")
        self.parts.append(f"<figure>{shown}<figcaption>{html.escape(caption)} "
                          f"<a href='tables/{name}.csv'>{name}.csv</a></figcaption></figure>")

    def section(self, heading: str, result, name: str, caption: str) -> None:
        """A part of the lab: its heading, the result's one-line summary and its table (as `name`.csv)."""
        self.add(f"<h2>{html.escape(heading)}</h2>")
        self.text(result.summary())
        self.table(result.table.drop(columns=["evaluated_on"]), name, caption)

    def figure(self, fig, name: str, caption: str = "") -> None:
        import base64
        path = self.out / "figures" / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        self.parts.append(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"
                          f"<figcaption>{html.escape(caption)} <a href='figures/{name}.png'>{name}.png</a>"
                          f"</figcaption></figure>")

    def write(self, title: str) -> Path:
        path = self.out / "report.html"
        style = ("body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;max-width:1040px;"
                 "margin:24px auto;padding:0 16px;color:#222;line-height:1.45}"
                 "h1{font-size:26px}h2{font-size:20px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:36px}"
                 "table.data{border-collapse:collapse;font-size:13px;margin:6px 0}"
                 "table.data th,table.data td{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}"
                 "table.data th{background:#f5f5f5}figure{margin:12px 0 20px}img{max-width:100%;height:auto}"
                 "figcaption{font-size:12px;color:#666}code{background:#f4f4f4;padding:1px 4px;border-radius:3px}"
                 ".note{background:#f7f9fc;border-left:3px solid #5b8def;padding:8px 12px}")
        page = (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{''.join(self.parts)}"
                "</body></html>\n")
        path.write_text(page, encoding="utf-8")
        return path

    def glossary(self) -> None:
        """The words and units of the tables, as in the lab's Part 3 glossary."""
        items = "".join(f"<dt><b>{html.escape(term)}</b></dt><dd>{html.escape(text)}</dd>" for term, text in GLOSSARY)
        self.add(f"<h2>Glossary: the numbers in the tables</h2><dl>{items}</dl>")
