"""Look at one SAE feature: where it fires (top examples in context), what it writes to the logits,
and a one-page HTML card with both and its activation histogram.

Everything streams over the activations in batches (a running top-k), so it works on rows kept on
disk. The HTML uses inline styles only and embeds its one image as a data URI: a saved card opens
in a browser with no server and no internet.
"""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from saelab.activations.rows import Activations, gather_rows, iter_row_batches
from saelab.files import atomic_write_text
from saelab.results import Result, fmt, pct
from saelab.sae.interface import as_sae
from saelab.utils import active, token_text, visible_token
from saelab.validate import check_feature, check_int, check_model, check_rows

EXAMPLE_COLUMNS = ("row", "text_index", "position", "token", "activation", "context")
EFFECT_COLUMNS = ("kind", "rank", "token_id", "token", "effect")
_FIRE_RGB = "255, 112, 67"     # the highlight colour of activations (orange-red)
_GREY_ON_SHADE = 0.35          # above this shade, grey whitespace marks (⏎, ·) are drawn dark instead
_FONT = "font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace"
_SANS = "font-family: system-ui, -apple-system, Helvetica, Arial, sans-serif"


# ----------------------------------------------------------------------------- shared helpers

def _shown_tokens(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of a table with its "token" column as displayed (`visible_token`)."""
    shown = table.copy()
    shown["token"] = shown["token"].map(lambda t: visible_token(t) if isinstance(t, str) else t)
    return shown


def _top(values: torch.Tensor, k: int) -> torch.Tensor:
    """The indices of the k largest of values [n], largest first, equal values in index order."""
    return torch.sort(values, descending=True, stable=True).indices[:k]


def _feature_values(sae, x: torch.Tensor, feature: int) -> torch.Tensor:
    """One feature's activation on rows x [b, d_in] -> [b] (through the SAE interface's encode)."""
    weight = sae.W_dec
    x = x.to(device=weight.device, dtype=weight.dtype)
    return sae.encode_unchecked(x)[:, feature]


@dataclass
class _Scan:
    values: torch.Tensor     # [<= k] the top activations, descending, all > 0
    rows: torch.Tensor       # [<= k] their row numbers
    n_active: int
    n_tokens: int
    active_values: torch.Tensor | None  # every positive activation (for a histogram), when kept


@torch.no_grad()
def _scan(sae, activations, feature: int, k: int, keep_values: bool = False,
          batch_size: int = 4096) -> _Scan:
    """One streaming pass: a running top-k of the feature's activations, and how often it fires."""
    best_values = torch.empty(0)
    best_rows = torch.empty(0, dtype=torch.int64)
    kept, n_active, start = [], 0, 0
    for batch in iter_row_batches(activations, batch_size):
        values = _feature_values(sae, batch, feature).float().cpu()
        rows = torch.arange(start, start + len(values))
        start += len(values)
        firing = active(values)
        n_active += int(firing.sum())
        if keep_values:
            kept.append(values[firing])
        values, rows = torch.cat([best_values, values]), torch.cat([best_rows, rows])
        top = _top(values, k)  # equal values sit in row order in this concatenation, so ties keep it
        best_values, best_rows = values[top], rows[top]
    positive = best_values > 0
    return _Scan(values=best_values[positive], rows=best_rows[positive], n_active=n_active, n_tokens=start,
                 active_values=torch.cat(kept) if keep_values and kept else None)


# ----------------------------------------------------------------------------- top examples

@dataclass(repr=False)
class TopExamples(Result):
    """The tokens where a feature fires most, strongest first.

    table: row, text_index, position, token, activation, context (the surrounding tokens with the
        firing token in «guillemets»; whitespace shown as ⏎ / ·). Without provenance (activations
        given as a tensor) text_index, position, token and context are empty.
    contexts: per example (string tokens, index of the firing token, each token's own activation of
        the feature or None where that token has no row, e.g. BOS or past the collected tokens).
    """
    feature: int
    table: pd.DataFrame
    contexts: list = field(default_factory=list)
    n_active: int = 0
    n_tokens: int = 0

    caption = "activation: the feature's value on that token; context: the tokens around it, the token in «»."

    @property
    def density(self) -> float:
        return self.n_active / self.n_tokens if self.n_tokens else 0.0

    def summary(self) -> str:
        if self.table.empty:
            return f"Feature {self.feature} never fires on these {self.n_tokens:,} tokens (a dead feature here)."
        return (f"Feature {self.feature}: top {len(self.table)} of {self.n_active:,} tokens where it fires "
                f"(density {pct(self.density)} of {self.n_tokens:,}); "
                f"max activation {fmt(self.table['activation'].iloc[0])}")

    def shown_table(self) -> pd.DataFrame:
        return _shown_tokens(self.table.drop(columns=["row"]))

    def html(self) -> str:
        """The examples as an HTML fragment: each context with tokens shaded by their activation."""
        head = f"<p style='{_SANS}; margin: 4px 0'><b>{html.escape(self.summary())}</b></p>"
        if self.table.empty:
            return head
        scale = float(self.table["activation"].max())
        lines = []
        for example, context in zip(self.table.itertuples(), self.contexts):
            tokens, index, acts = context if context else ([example.token or "?"], 0, [example.activation])
            spans = "".join(token_span(t, a, scale, i == index) for i, (t, a) in enumerate(zip(tokens, acts)))
            where = ("" if pd.isna(example.text_index)
                     else f"text {int(example.text_index)}, pos {int(example.position)}")
            lines.append(
                f"<tr><td style='text-align:right; padding:2px 8px; {_SANS}; color:#444'>{fmt(example.activation)}</td>"
                f"<td style='padding:2px 4px; {_FONT}; font-size:13px; white-space:pre'>{spans}</td>"
                f"<td style='padding:2px 8px; {_SANS}; font-size:11px; color:#888; white-space:nowrap'>{where}</td></tr>")
        return (f"{head}<table style='border-collapse:collapse'><tr style='{_SANS}; font-size:12px; color:#666'>"
                f"<th style='text-align:right; padding:2px 8px'>activation</th><th style='text-align:left'>context "
                f"(shade = this feature's activation on each token; boxed = the example's token)</th><th></th></tr>"
                f"{''.join(lines)}</table>")

    def _repr_html_(self) -> str:
        return self.html()


def token_span(token: str, activation, scale: float, firing: bool) -> str:
    """One token as HTML, shaded by activation / scale (None: no value), boxed when `firing`."""
    alpha = 0.0 if activation is None or scale <= 0 else max(0.0, min(1.0, activation / scale))
    tip = "no row" if activation is None else fmt(activation)
    style = f"background: rgba({_FIRE_RGB}, {alpha:.2f}); border-radius: 2px;"
    if firing:
        style += " outline: 1.5px solid #b71c1c; font-weight: bold;"
    if not token.strip():  # ⏎ / · in grey, dark where the shade is strong enough to hide grey
        style += " color: #999;" if alpha < _GREY_ON_SHADE else " color: #4a1300;"
    return f"<span title='{html.escape(tip, quote=True)}' style='{style}'>{html.escape(visible_token(token))}</span>"


@torch.no_grad()
def _examples(sae, activations, feature: int, scan: _Scan, context: int) -> TopExamples:
    if not isinstance(activations, Activations):  # a bare tensor: no provenance, rows and values only
        records = [(row, None, None, None, value, None) for row, value in zip(scan.rows.tolist(), scan.values.tolist())]
        return TopExamples(feature=feature, table=pd.DataFrame(records, columns=list(EXAMPLE_COLUMNS)),
                           n_active=scan.n_active, n_tokens=scan.n_tokens)
    windows = [(row, *activations.context(row, before=context, after=context)) for row in scan.rows.tolist()]
    neighbours = [_neighbour_rows(activations, row, len(tokens), index) for row, tokens, index in windows]
    wanted = sorted({r for rs in neighbours for r in rs if r is not None})
    values = {}
    if wanted:
        found = _feature_values(sae, gather_rows(activations, torch.tensor(wanted)), feature).float().cpu()
        values = dict(zip(wanted, found.tolist()))
    records, contexts = [], []
    for (row, tokens, index), rows, value in zip(windows, neighbours, scan.values.tolist()):
        acts = [None if r is None else values[r] for r in rows]
        acts[index] = value
        contexts.append((tokens, index, acts))
        shown = [visible_token(t) for t in tokens]
        shown[index] = f"«{shown[index]}»"
        records.append((row, int(activations.text_index[row]), int(activations.position[row]),
                        activations.str_token(row), value, "".join(shown)))
    return TopExamples(feature=feature, table=pd.DataFrame(records, columns=list(EXAMPLE_COLUMNS)),
                       contexts=contexts, n_active=scan.n_active, n_tokens=scan.n_tokens)


def _neighbour_rows(activations: Activations, row: int, n_shown: int, index: int) -> list[int | None]:
    """The row number of each of the n_shown context tokens around `row` (its token at `index`), or None:
    a neighbour has a row when the row next door is the same text at the matching position (rows are in
    text order; BOS and tokens past max_tokens have none)."""
    n = len(activations)
    text, pos = int(activations.text_index[row]), int(activations.position[row])
    out = []
    for j in range(n_shown):
        r = row + j - index
        same = 0 <= r < n and int(activations.text_index[r]) == text and int(activations.position[r]) == pos + j - index
        out.append(r if same else None)
    return out


def top_activating_examples(sae, activations, feature: int, k: int = 10, context: int = 8) -> TopExamples:
    """The k tokens where `feature` fires most, each with `context` tokens either side.

    sae: any SAE with saelab's SAE interface (`saelab.as_sae`).
    activations: a single-layer `Activations` (its provenance gives the surrounding tokens) or a float
    tensor [n_tokens, d_in] (rows and values only). Streams over the rows in batches with a running
    top-k; only tokens where the feature is active (> 0) are returned, so a rare feature gives fewer
    than k. Returns a `TopExamples` (.table; shows as highlighted HTML in a notebook).
    """
    sae = as_sae("sae", sae)
    check_rows("activations", activations, sae.d_in)
    feature = check_feature("feature", feature, sae.d_sae)
    check_int("k", k, minimum=1)
    check_int("context", context, minimum=0)
    return _examples(sae, activations, feature, _scan(sae, activations, feature, k), context)


# ----------------------------------------------------------------------------- logit effects

@dataclass(repr=False)
class LogitEffects(Result):
    """The tokens a feature's decoder direction promotes and suppresses most through the unembedding.

    table: kind ("promotes" / "suppresses"), rank, token_id, token, effect (the direct effect on
    that token's logit of one unit of the feature's activation).
    """
    feature: int
    table: pd.DataFrame
    scaled_by_ln: bool = False

    def summary(self) -> str:
        top = [f"'{visible_token(t)}'" for t in self.table[self.table["kind"] == "promotes"]["token"].head(3)]
        return f"Feature {self.feature}'s direct logit effect: promotes {', '.join(top)}, ..."

    def shown_table(self) -> pd.DataFrame:
        return _shown_tokens(self.table)

    def html(self) -> str:
        """Two side-by-side lists (promoted / suppressed) with bars proportional to the effect."""
        scale = float(self.table["effect"].abs().max()) or 1.0
        columns = []
        for kind, colour in (("promotes", "46, 125, 50"), ("suppresses", "198, 40, 40")):
            part = self.table[self.table["kind"] == kind]
            items = "".join(
                f"<tr><td style='{_FONT}; font-size:13px; padding:1px 8px; white-space:pre'>"
                f"{html.escape(visible_token(r.token))}</td><td style='padding:1px 4px; width:120px'><div style='"
                f"background: rgba({colour}, 0.75); height: 10px; "
                f"width: {100 * abs(r.effect) / scale:.0f}%'></div></td>"
                f"<td style='{_SANS}; font-size:12px; text-align:right; color:#444'>{_signed(r.effect)}</td></tr>"
                for r in part.itertuples())
            columns.append(f"<td style='vertical-align:top; padding-right:24px'><div style='{_SANS}; font-size:12px; "
                           f"color:#555; margin-bottom:2px'>{kind}</div><table style='border-collapse:collapse'>"
                           f"{items}</table></td>")
        return (f"<p style='{_SANS}; margin: 4px 0'><b>{html.escape(self.summary())}</b></p>"
                f"<table style='border-collapse:collapse'><tr>{''.join(columns)}</tr></table>")

    def _repr_html_(self) -> str:
        return self.html()


@torch.no_grad()
def feature_logit_effects(model, sae, feature: int, k: int = 10) -> LogitEffects:
    """The k tokens whose logits the feature's decoder direction raises most, and the k it lowers most.

    effect = W_dec[feature] @ W_U [d_vocab]: the direct path from the feature's output through the
    unembedding, ignoring later layers. The final layer norm's scale is applied where the model has
    one: with normalization_type "LN" (or "RMS") the direction is multiplied by ln_final.w first; with
    folded layer norm ("LNPre" / "RMSPre", as in the embedded tiny model and in TransformerLens'
    default GPT-2) that scale is already folded into W_U, so there is nothing to apply. The layer
    norm's division by the residual norm is ignored (it rescales all logits alike).
    """
    sae = as_sae("sae", sae)
    check_model("model", model, needs=("cfg", "W_U"))
    if model.cfg.d_model != sae.d_in:
        raise ValueError(f"sae: its d_in ({sae.d_in}) differs from the model's d_model ({model.cfg.d_model}); "
                         f"use an SAE trained on this model's activations")
    feature = check_feature("feature", feature, sae.d_sae)
    check_int("k", k, minimum=1)
    k = min(k, model.cfg.d_vocab)
    direction = sae.W_dec[feature].to(device=model.W_U.device, dtype=model.W_U.dtype)
    scaled = model.cfg.normalization_type in ("LN", "RMS")
    if scaled:
        direction = direction * model.ln_final.w
    effects = (direction @ model.W_U).float().cpu()      # [d_vocab]
    records, tokenizer = [], getattr(model, "tokenizer", None)
    for kind, top in (("promotes", _top(effects, k)), ("suppresses", _top(-effects, k))):
        for rank, token_id in enumerate(top.tolist(), 1):
            records.append((kind, rank, token_id, token_text(tokenizer, token_id), float(effects[token_id])))
    return LogitEffects(feature=feature, table=pd.DataFrame(records, columns=list(EFFECT_COLUMNS)),
                        scaled_by_ln=scaled)


def _signed(value: float) -> str:
    return f"+{fmt(value)}" if value >= 0 else fmt(value)


# ----------------------------------------------------------------------------- feature card

@dataclass(repr=False)
class FeatureCard(Result):
    """One feature at a glance: density, activation histogram, top examples and logit effects.

    table: one row: feature, source, density, n_active, n_tokens, max_activation, mean_active
    (the examples and logit effects have their own `.table`). `_repr_html_` shows the card in a
    notebook; `save(path)` writes a standalone HTML page.
    """
    feature: int
    density: float
    n_active: int
    n_tokens: int
    max_activation: float
    mean_active: float
    examples: TopExamples
    logit_effects: LogitEffects
    histogram_png: str          # base64 PNG ("" when the feature never fires)
    source: str = ""            # which SAE: model, layer, hook

    def summary(self) -> str:
        return (f"Feature {self.feature}{' of ' + self.source if self.source else ''}: active on {self.n_active:,} of "
                f"{self.n_tokens:,} tokens ({pct(self.density)}), max {fmt(self.max_activation)}, "
                f"mean when active {fmt(self.mean_active)}")

    @property
    def table(self) -> pd.DataFrame:
        keys = ("feature", "source", "density", "n_active", "n_tokens", "max_activation", "mean_active")
        return pd.DataFrame([{key: getattr(self, key) for key in keys}])

    def html(self) -> str:
        """The card as an HTML fragment (inline styles, the histogram as a data URI)."""
        stats = "".join(
            f"<div style='display:inline-block; margin-right:28px'><div style='font-size:11px; color:#777'>{name}</div>"
            f"<div style='font-size:18px'>{html.escape(value)}</div></div>"
            for name, value in (("density", pct(self.density)),
                                ("active tokens", f"{self.n_active:,} / {self.n_tokens:,}"),
                                ("max activation", fmt(self.max_activation)),
                                ("mean when active", fmt(self.mean_active))))
        histogram = (f"<img alt='activation histogram' style='max-width:100%; height:auto' "
                     f"src='data:image/png;base64,{self.histogram_png}'>" if self.histogram_png
                     else "<p style='color:#777'>The feature never fires on these tokens: no histogram.</p>")
        title = f"Feature {self.feature}" + (f" <span style='color:#777; font-weight:normal; font-size:15px'>"
                                            f"{html.escape(self.source)}</span>" if self.source else "")
        section = f"style='{_SANS}; font-size:14px; margin:18px 0 4px; color:#333; border-bottom:1px solid #ddd'"
        return (f"<div style='{_SANS}; max-width:980px; padding:8px 4px'>"
                f"<h2 style='margin:0 0 8px; font-size:20px'>{title}</h2>"
                f"<p style='margin:0 0 8px; font-size:13px; color:#555'>{html.escape(self.summary())}</p>"
                f"<div>{stats}</div>"
                f"<h3 {section}>Activation when active</h3>{histogram}"
                f"<h3 {section}>Top activating tokens</h3>{self.examples.html()}"
                f"<h3 {section}>Direct effect on the logits (decoder direction through the unembedding)</h3>"
                f"{self.logit_effects.html()}</div>")

    def _repr_html_(self) -> str:
        return self.html()

    def save(self, path) -> Path:
        """Write a standalone .html page (no scripts, fonts or links: opens offline), atomically; returns the path."""
        path = Path(path)
        if path.suffix.lower() not in (".html", ".htm"):
            raise ValueError(f"path: expected a file name ending in .html, got {str(path)!r}")
        page = (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>"
                f"{html.escape(f'saelab feature {self.feature}')}</title></head>"
                f"<body style='margin:24px; background:#fff; color:#222'>{self.html()}</body></html>\n")
        return atomic_write_text(path, page)


def _histogram_png(values: torch.Tensor, feature: int) -> str:
    """A base64 PNG histogram of the feature's positive activations (log count axis)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 2.6), dpi=100)
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    counts, _, _ = ax.hist(values.numpy(), bins=50, color="#ff7043", edgecolor="white", linewidth=0.4)
    log = counts.max() > 30 * max(1.0, counts[counts > 0].min())
    if log:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    else:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel=f"feature {feature} activation (on the tokens where it is > 0)",
           ylabel="tokens (log scale)" if log else "tokens")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def feature_card(model, sae, activations, feature: int, k: int = 10) -> FeatureCard:
    """One view of a feature: its density, a histogram of its activations, the k tokens where it
    fires most (in context, from `top_activating_examples`) and the k tokens it promotes and
    suppresses most (`feature_logit_effects`). One streaming pass over the activations.
    Returns a `FeatureCard` (shows in a notebook; `.save("feature.html")` for a standalone page).
    """
    sae = as_sae("sae", sae)
    check_rows("activations", activations, sae.d_in)
    feature = check_feature("feature", feature, sae.d_sae)
    check_int("k", k, minimum=1)
    effects = feature_logit_effects(model, sae, feature, k)
    scan = _scan(sae, activations, feature, k, keep_values=True)
    examples = _examples(sae, activations, feature, scan, context=8)
    active = scan.active_values if scan.active_values is not None else torch.empty(0)
    meta = sae.metadata
    parts = (meta.get("model_name"), None if sae.layer is None else f"layer {sae.layer}",
             meta.get("hook") or sae.hook_name)
    source = ", ".join(str(part) for part in parts if part)
    return FeatureCard(feature=feature, density=scan.n_active / scan.n_tokens, n_active=scan.n_active,
                       n_tokens=scan.n_tokens, max_activation=float(active.max()) if len(active) else 0.0,
                       mean_active=float(active.mean()) if len(active) else 0.0, examples=examples,
                       logit_effects=effects, histogram_png=_histogram_png(active, feature) if len(active) else "",
                       source=source)
