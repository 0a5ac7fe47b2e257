"""Ablation: switch a feature off. The feature's own contribution `f_i(x) * d_i` is removed from the real
activation x at the SAE's hook (x - f_i(x) d_i, not the reconstruction: the SAE's error term stays in),
and `feature_ablation` measures the change in next-token loss on every token of held-out texts.
"""
from __future__ import annotations

import html
from dataclasses import dataclass

import pandas as pd
import torch

from saelab.activations.windows import prepends_bos, split_windows, tokenize
from saelab.features.cards import token_span
from saelab.features.steering import hook_name_of, hooked
from saelab.precision import at_least_float32, in_working_dtype
from saelab.results import Result, change, fmt
from saelab.sae.interface import as_sae
from saelab.utils import progress_bar, token_text, visible_token
from saelab.validate import check_feature, check_int, check_model, check_texts

ABLATION_COLUMNS = ("text_index", "position", "token", "next_token", "activation", "loss_clean", "loss_ablated",
                    "delta_loss")


def ablated(sae, x: torch.Tensor, feature: int, skip_bos: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference ablation of activations x [batch, pos, d_in]: (x - f_i(x) d_i, f_i(x) [batch, pos]).
    Position 0 is left alone when skip_bos (the BOS row, which the SAE never saw)."""
    weight = sae.W_dec
    f = sae.encode_unchecked(x.to(device=weight.device, dtype=weight.dtype))[..., feature]
    if skip_bos:
        f = torch.cat([torch.zeros_like(f[:, :1]), f[:, 1:]], dim=1)
    return x - (f[..., None] * weight[feature]).to(x.dtype), f


@dataclass(repr=False)
class AblationResult(Result):
    """The change in next-token loss when one feature is removed, token by token.

    table: one row per token that predicts a next token: text_index, position (in the text's tokens),
    token, next_token, activation (the feature's value there), loss_clean, loss_ablated (nats), and
    delta_loss = loss_ablated - loss_clean (> 0: the feature helped predict next_token).
    """
    feature: int
    table: pd.DataFrame
    k: int = 10

    caption = ("delta_loss: next-token loss (nats) with the feature's contribution removed minus without; > 0 where "
               "the feature helps. The token is the one whose activation was changed; next_token what it predicts.")

    @property
    def firing(self) -> pd.Series:
        """Where the feature fires (saelab's one definition of active: != 0)."""
        return self.table.activation != 0

    @property
    def mean_delta_firing(self) -> float:
        return float(self.table.delta_loss[self.firing].mean()) if self.firing.any() else 0.0

    @property
    def mean_delta_silent(self) -> float:
        return float(self.table.delta_loss[~self.firing].mean()) if (~self.firing).any() else 0.0

    def summary(self) -> str:
        return (f"Ablating feature {self.feature}: next-token loss {change(self.mean_delta_firing)} nats on the "
                f"{int(self.firing.sum()):,} tokens where it fires and {change(self.mean_delta_silent)} on the "
                f"{int((~self.firing).sum()):,} where it does not")

    def top(self, k: int | None = None) -> pd.DataFrame:
        """The k tokens where the feature helps most (largest delta_loss), ties by order."""
        return self.table.sort_values("delta_loss", ascending=False, kind="stable").head(k or self.k)

    def shown_table(self) -> pd.DataFrame:
        return self.top().assign(token=lambda t: t.token.map(visible_token),
                                 next_token=lambda t: t.next_token.map(visible_token))

    def plot(self):
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3.2))
        t = self.table
        ax.scatter(t.activation, t.delta_loss, s=6, alpha=0.5)
        ax.axhline(0, color="0.6", linestyle=":")
        ax.set(xlabel=f"feature {self.feature} activation", ylabel="Δ next-token loss when ablated (nats)",
               title=f"Ablating feature {self.feature}")
        fig.tight_layout()
        plt.close(fig)
        return fig

    def html(self, context: int = 8) -> str:
        """The tokens where the feature helps most, each in context shaded by delta_loss, like the cards."""
        scale = max(float(self.table.delta_loss.max()), 1e-9)
        lines = []
        for r in self.top().itertuples():
            text = self.table[self.table.text_index == r.text_index]
            near = text[(text.position - r.position).abs() <= context]
            spans = "".join(token_span(t.token, max(0.0, t.delta_loss), scale, t.position == r.position)
                            for t in near.itertuples())
            lines.append(f"<tr><td style='text-align:right; padding:2px 8px'>{fmt(r.delta_loss)}</td>"
                         f"<td style='font-family:monospace; white-space:pre; padding:2px 4px'>{spans}</td>"
                         f"<td style='white-space:nowrap; color:#888; font-size:11px'>→ "
                         f"{html.escape(visible_token(r.next_token))}</td></tr>")
        return (f"<p><b>{html.escape(self.summary())}</b></p><table style='border-collapse:collapse'><tr>"
                "<th>Δ loss</th><th style='text-align:left'>context (shade = loss rise when ablated; boxed = the "
                f"token)</th><th>next</th></tr>{''.join(lines)}</table>"
                f"<p style='font-size:smaller; color:#555'>{html.escape(self.caption)}</p>")

    def _repr_html_(self) -> str:
        return self.html()


def _next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """-log P(tokens[:, t + 1]) at each position t: [batch, pos - 1], on the CPU."""
    logp = torch.log_softmax(at_least_float32(logits[:, :-1]), -1)
    return -logp.gather(-1, tokens[:, 1:, None])[..., 0].cpu()


@torch.no_grad()
def _batch_losses(model, sae, windows: list[torch.Tensor], feature: int, name: str) -> list[tuple]:
    """Per window (token ids [len]) of a right-padded batch: (loss_clean, loss_ablated, activation), each
    [len - 1]. Causal attention: padding after a window never changes its own positions."""
    lengths = [len(w) for w in windows]
    tokens = torch.zeros(len(windows), max(lengths), dtype=torch.long)
    for i, w in enumerate(windows):
        tokens[i, :len(w)] = w
    tokens, seen = tokens.to(model.cfg.device), {}

    def hook(activation, hook=None):
        out, seen["f"] = ablated(sae, activation, feature)
        return out

    clean = _next_token_loss(model(tokens), tokens)
    with hooked(model, name, hook):
        ablated_loss = _next_token_loss(model(tokens), tokens)
    f = seen["f"].float().cpu()
    return [(clean[i, :n - 1], ablated_loss[i, :n - 1], f[i, :n - 1]) for i, n in enumerate(lengths)]


def feature_ablation(model, sae, texts, feature: int, k: int = 10, hook_name: str | None = None,
                     batch_size: int = 8, progress: bool = True) -> AblationResult:
    """Per token of `texts` (held-out), the change in next-token loss when the feature's contribution
    f_i(x) d_i is removed from the activation at the SAE's hook (`hook_name` to override), every
    position but BOS. Long texts are read in context-sized windows, each starting with BOS, as
    `collect_activations` reads them, `batch_size` windows per forward pass. Returns an `AblationResult`
    (the k tokens where it helps most)."""
    check_model("model", model, needs=("cfg", "hook_dict", "to_tokens"))
    sae = as_sae("sae", sae)
    texts = check_texts("texts", texts, allow_str=True)
    feature = check_feature("feature", feature, sae.d_sae)
    check_int("k", k, minimum=1)
    name = hook_name_of(model, sae, hook_name)
    bos = prepends_bos(model)
    text_tokens = tokenize(model, texts)
    check_int("batch_size", batch_size, minimum=1)
    tokenizer, records = getattr(model, "tokenizer", None), []
    windows = split_windows(text_tokens, model.cfg.n_ctx, bos)
    batches = [windows[i:i + batch_size] for i in range(0, len(windows), batch_size)]
    with in_working_dtype(model, sae):   # float64 under $SAELAB_PRECISION
        for batch in progress_bar(batches, progress=progress, desc=f"ablating feature {feature}"):
            inputs = [w.tokens(text_tokens[w.text], bos) for w in batch]
            for window, ids, (clean, abl, f) in zip(batch, inputs, _batch_losses(model, sae, inputs, feature, name)):
                positions = window.text_positions(bos).tolist()
                for j in range(int(window.added_bos(bos)), len(ids) - 1):
                    records.append((window.text, positions[j], token_text(tokenizer, int(ids[j])),
                                    token_text(tokenizer, int(ids[j + 1])), float(f[j]), float(clean[j]),
                                    float(abl[j])))
    table = pd.DataFrame(records, columns=list(ABLATION_COLUMNS[:-1]))
    table["delta_loss"] = table.loss_ablated - table.loss_clean
    return AblationResult(feature=feature, table=table, k=k)
