"""Steering: switch a feature on. While `steer(...)` is open, the model's activation at the SAE's hook
gets `alpha * d_i` added, d_i the feature's decoder direction in raw activation units
(`sae.W_dec[i]`: input_scale applied; SAELens SAEs through `as_sae`). `steering_effect` measures what
that does: the continuations the model writes and the log-probability of the tokens the feature
promotes.
"""
from __future__ import annotations

import contextlib
import html
from dataclasses import dataclass, field

import pandas as pd
import torch

from saelab.features.cards import feature_logit_effects, top_activating_examples
from saelab.results import Result, change, fmt
from saelab.sae.interface import as_sae
from saelab.utils import describe, token_text, visible_token
from saelab.validate import check_choice, check_feature, check_float, check_int, check_model, check_rows

#: Where the direction is added: every position but 0 (the BOS the model prepends), all, or the last one.
POSITIONS = ("all-but-bos", "all", "last")
#: alpha_scale="max": alpha counts in units of the feature's top activation on the given rows.
ALPHA_SCALES = ("max",)
STEERING_COLUMNS = ("alpha", "prompt_index", "prompt", "greedy", "sampled", "logprob_top", "delta_logprob_top")


def hook_name_of(model, sae, hook_name=None) -> str:
    """The full hook name to act at: `hook_name` if given, else the SAE's own; ValueError when the model
    has no such hook or neither is known."""
    name = hook_name if hook_name is not None else sae.hook_name
    if not isinstance(name, str) or name not in model.hook_dict:
        raise ValueError(f"hook_name: expected a hook of this model such as 'blocks.1.hook_resid_post' (the SAE "
                         f"{'names ' + repr(sae.hook_name) if sae.hook_name else 'names none'}), got {describe(name)}")
    return name


def position_mask(n_positions: int, positions: str, device=None) -> torch.Tensor:
    """[n_positions] bool: where `positions` ("all-but-bos", "all", "last") acts."""
    mask = torch.zeros(n_positions, dtype=torch.bool, device=device)
    if positions == "all":
        mask[:] = True
    elif positions == "last":
        mask[-1] = True
    else:
        mask[1:] = True
    return mask


def steering_hook(vector: torch.Tensor, positions: str = "all-but-bos"):
    """The reference hook: activation [batch, pos, d_in] -> activation + vector at `positions`; vector is
    [d_in] (every sequence) or [batch, d_in] (one per sequence)."""
    def hook(activation, hook=None):
        mask = position_mask(activation.shape[1], positions, activation.device)
        added = vector.to(device=activation.device, dtype=activation.dtype).reshape(-1, 1, activation.shape[-1])
        return activation + mask[None, :, None] * added
    return hook


@contextlib.contextmanager
def hooked(model, hook_name: str, hook):
    """Register `hook` (TransformerLens form, fn(activation, hook)) at `hook_name` for the `with` body and
    remove exactly that hook on exit, after an exception or Ctrl-C too (other hooks stay)."""
    point = model.hook_dict[hook_name]
    point.add_hook(hook)
    handle = point.fwd_hooks[-1]
    try:
        yield
    finally:
        handle.hook.remove()
        if handle in point.fwd_hooks:
            point.fwd_hooks.remove(handle)


def feature_scale(sae, activations, feature: int) -> float:
    """The feature's top activation on `activations` (what alpha_scale="max" multiplies alpha by)."""
    top = top_activating_examples(sae, activations, feature, k=1, context=0).table
    if top.empty:
        raise ValueError(f"activations: feature {feature} never fires on these rows, so alpha_scale='max' has no "
                         "scale; give rows where it fires or alpha in raw units (alpha_scale=None)")
    return float(top["activation"].iloc[0])


def _steering_vector(model, sae, feature, alpha, positions, alpha_scale, activations, hook_name):
    """Checked arguments -> (hook name, the added vector [d_in]); the one door of steer and steering_effect."""
    check_model("model", model, needs=("cfg", "hook_dict", "to_tokens"))
    sae = as_sae("sae", sae)
    feature = check_feature("feature", feature, sae.d_sae)
    alpha = check_float("alpha", alpha)
    check_choice("positions", positions, POSITIONS)
    check_choice("alpha_scale", alpha_scale, ALPHA_SCALES, allow_none=True)
    name = hook_name_of(model, sae, hook_name)
    scale = 1.0
    if alpha_scale is not None:
        if activations is None:
            raise ValueError("activations: expected held-out rows (alpha_scale='max' measures the feature's top "
                             "activation on them), got None")
        check_rows("activations", activations, sae.d_in)
        scale = feature_scale(sae, activations, feature)
    return name, alpha * scale * sae.W_dec[feature].detach()


@contextlib.contextmanager
def steer(model, sae, feature: int, alpha: float, positions: str = "all-but-bos", alpha_scale: str | None = None,
          activations=None, hook_name: str | None = None):
    """Within the `with` block, the model runs with `alpha * d_i` added to the activation at the SAE's
    hook (`sae.hook_name`, or `hook_name`), d_i = `sae.W_dec[feature]` in raw units.

    positions: "all-but-bos" (default: position 0 is the BOS the model prepends, which the SAE never
        saw), "all", or "last". alpha_scale="max": alpha is a multiple of the feature's top activation
        on `activations` (held-out rows), so one number means the same on every model.
    Yields the added vector [d_in]. The hook is removed on exit, after an exception or Ctrl-C too.
    """
    name, vector = _steering_vector(model, sae, feature, alpha, positions, alpha_scale, activations, hook_name)
    with hooked(model, name, steering_hook(vector, positions)):
        yield vector


def pick_features(model, sae, density: torch.Tensor, n: int = 2, vocab=None, low: float = 0.002,
                  high: float = 0.05) -> list[int]:
    """The lab's rule for features worth steering and ablating: among features active on more than `low`
    and less than `high` of held-out tokens (density [d_sae], e.g. `evaluate(...).feature_density`:
    alive, not dense), the n whose decoder direction raises one token's logit most, counting only the
    tokens in `vocab` (ids, e.g. the held-out rows' `token_ids`: tokens the model really writes, not rare
    byte pieces whose unembedding rows are large), largest first, ties by id. With none in that band (a
    tiny run), among all alive features."""
    sae = as_sae("sae", sae)
    check_int("n", n, minimum=1)
    density = torch.as_tensor(density, dtype=torch.float64).cpu()
    candidates = torch.nonzero((density > low) & (density < high)).flatten()
    if len(candidates) == 0:  # a tiny run: any alive feature
        candidates = torch.nonzero(density > 0).flatten()
    if len(candidates) == 0:
        raise ValueError("density: expected some alive features (density > 0), got none: every feature is dead")
    unembed = model.W_U if vocab is None else model.W_U[:, _vocab_ids(vocab, model.cfg.d_vocab).to(model.W_U.device)]
    direction = sae.W_dec[candidates.to(sae.W_dec.device)].detach().to(unembed)
    top = (direction @ unembed).max(dim=-1).values.float().cpu()
    order = torch.sort(-top, stable=True).indices[:n]
    return candidates[order].tolist()


def _vocab_ids(vocab, d_vocab: int) -> torch.Tensor:
    """The distinct token ids of `vocab` (any int sequence or tensor), checked to be in [0, d_vocab)."""
    ids = torch.as_tensor(vocab).flatten().long().unique().cpu()
    if len(ids) == 0 or ids.min() < 0 or ids.max() >= d_vocab:
        raise ValueError(f"vocab: expected token ids in [0, {d_vocab - 1}], got {describe(vocab)}")
    return ids


# ----------------------------------------------------------------------------- the effect

@torch.no_grad()
def _continue(model, tokens: torch.Tensor, n_new: int, generators: list, temperature: float) -> list[list[int]]:
    """n_new next tokens after each sequence of tokens [batch, pos]: greedy where generators[b] is None,
    else sampled with it. The whole sequence runs each step (no cache), so position 0 stays the BOS."""
    out = tokens.clone()
    for _ in range(n_new):
        logits = model(out)[:, -1].float().cpu()
        nxt = [int(row.argmax()) if g is None else
               int(torch.multinomial(torch.softmax(row / temperature, -1), 1, generator=g))
               for row, g in zip(logits, generators)]
        out = torch.cat([out, torch.tensor(nxt, device=out.device)[:, None]], dim=1)
    return out[:, tokens.shape[1]:].tolist()


@torch.no_grad()
def _logprob_top(model, tokens: torch.Tensor, top_ids: torch.Tensor) -> list[float]:
    """Per sequence of tokens [batch, pos], the mean over positions 1.. of log P(next token in top_ids)."""
    logp = torch.log_softmax(model(tokens).float(), -1)[:, 1:]
    return torch.logsumexp(logp[..., top_ids.to(logp.device)], -1).mean(-1).cpu().tolist()


@dataclass(repr=False)
class SteeringResult(Result):
    """What steering one feature does to a few prompts, per alpha (alpha 0 = unsteered).

    table: alpha, prompt_index, prompt, greedy, sampled (continuations, seeded), logprob_top (mean
    log-probability, over the prompt's positions, that the next token is one of `top_tokens`, the
    feature's top promoted tokens), delta_logprob_top (its change from alpha 0, in nats).
    """
    feature: int
    table: pd.DataFrame
    top_tokens: list = field(default_factory=list)
    tokens: dict = field(default_factory=dict)   # (alpha, prompt_index, "greedy"/"sampled") -> [str]
    scale: float = 1.0

    caption = ("greedy / sampled: the model's continuation with the feature added at strength alpha (sampled with a "
               "fixed seed); delta_logprob_top: change in log P(next token is one of the feature's top promoted "
               "tokens), nats, mean over the prompt's positions.")

    def mean_delta(self, alpha: float) -> float:
        return float(self.table[self.table.alpha == alpha].delta_logprob_top.mean())

    def summary(self) -> str:
        top = float(self.table.alpha.max())
        return (f"Steering feature {self.feature} (top promoted tokens {', '.join(repr(t) for t in self.top_tokens[:3])}"
                f"): at alpha {fmt(top)} their log-probability {change(self.mean_delta(top))} nats on average "
                f"over {self.table.prompt_index.nunique()} prompts")

    def shown_table(self) -> pd.DataFrame:
        return self.table.drop(columns=["prompt_index"])

    def plot(self):
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3.2))
        means = self.table.groupby("alpha").delta_logprob_top.mean()
        ax.plot(means.index, means.values, "o-")
        ax.axhline(0, color="0.6", linestyle=":")
        ax.set(xlabel="alpha (steering strength)", ylabel="Δ log P(top promoted tokens), nats",
               title=f"Steering feature {self.feature}")
        fig.tight_layout()
        plt.close(fig)
        return fig

    def html(self) -> str:
        """Per prompt and alpha, the continuations, tokens that differ from alpha 0's highlighted."""
        rows = []
        for r in self.table.itertuples():
            cells = "".join(f"<td style='font-family:monospace; white-space:pre-wrap'>{self._marked(r, kind)}</td>"
                            for kind in ("greedy", "sampled"))
            rows.append(f"<tr><td>{html.escape(r.prompt)}</td><td>{fmt(r.alpha)}</td>{cells}"
                        f"<td>{fmt(r.delta_logprob_top)}</td></tr>")
        return (f"<p><b>{html.escape(self.summary())}</b></p><table><tr><th>prompt</th><th>alpha</th><th>greedy</th>"
                f"<th>sampled</th><th>Δ log P(top)</th></tr>{''.join(rows)}</table>"
                f"<p style='font-size:smaller; color:#555'>{html.escape(self.caption)} Highlighted: tokens that differ "
                "from the unsteered continuation.</p>")

    def _marked(self, row, kind: str) -> str:
        base = self.tokens[(0.0, row.prompt_index, kind)]
        return "".join(html.escape(visible_token(t)) if i < len(base) and base[i] == t
                       else f"<span class='steered' style='background:#ffe0b2'>{html.escape(visible_token(t))}</span>"
                       for i, t in enumerate(self.tokens[(row.alpha, row.prompt_index, kind)]))

    def _repr_html_(self) -> str:
        return self.html()


def steering_effect(model, sae, feature: int, prompts, alphas=(0.0, 1.0, 2.0, 4.0), n_new: int = 12, k_tokens: int = 10,
                    seed: int = 0, temperature: float = 1.0, positions: str = "all-but-bos",
                    alpha_scale: str | None = None, activations=None, hook_name: str | None = None,
                    vocab=None) -> SteeringResult:
    """For each alpha (0 always added), each prompt's greedy and sampled continuation (n_new tokens;
    sampling seeded by `seed` and the prompt, the same for every alpha) while `steer(...)` is on, and the
    change in the mean log-probability of the feature's k_tokens top promoted tokens (`feature_logit_effects`;
    among the ids in `vocab` only, when given, as for `pick_features`)."""
    from saelab.validate import check_texts
    prompts = check_texts("prompts", prompts, allow_str=True)
    alphas = sorted({0.0, *(check_float("alphas", a) for a in alphas)})
    check_int("n_new", n_new, minimum=1)
    check_int("seed", seed)
    check_float("temperature", temperature, minimum=0, strict=True)
    sae = as_sae("sae", sae)
    name, unit = _steering_vector(model, sae, feature, 1.0, positions, alpha_scale, activations, hook_name)
    effects = feature_logit_effects(model, sae, feature, model.cfg.d_vocab if vocab is not None else k_tokens).table
    effects = effects[effects.kind == "promotes"]
    if vocab is not None:
        effects = effects[effects.token_id.isin(_vocab_ids(vocab, model.cfg.d_vocab).tolist())]
    effects = effects.head(k_tokens)
    top_ids = torch.tensor(effects.token_id.tolist())
    records, tokens, tokenizer = [], {}, getattr(model, "tokenizer", None)
    strengths = torch.tensor(alphas, dtype=unit.dtype, device=unit.device)[:, None] * unit   # [n_alphas, d_in]
    for p, prompt in enumerate(prompts):  # every alpha at once: one batch row per (kind, alpha)
        ids = model.to_tokens(prompt)
        with hooked(model, name, steering_hook(torch.cat([strengths, strengths]), positions)):
            gens = [None] * len(alphas) + [torch.Generator().manual_seed(seed + p) for _ in alphas]
            new = _continue(model, ids.expand(2 * len(alphas), -1), n_new, gens, temperature)
        with hooked(model, name, steering_hook(strengths, positions)):
            logprobs = _logprob_top(model, ids.expand(len(alphas), -1), top_ids)
        for a, alpha in enumerate(alphas):
            for kind, row in (("greedy", new[a]), ("sampled", new[len(alphas) + a])):
                tokens[(alpha, p, kind)] = [token_text(tokenizer, t) for t in row]
            records.append([alpha, p, prompt, "".join(tokens[(alpha, p, "greedy")]),
                            "".join(tokens[(alpha, p, "sampled")]), logprobs[a]])
    table = pd.DataFrame(records, columns=list(STEERING_COLUMNS[:-1])).sort_values(
        ["alpha", "prompt_index"], ignore_index=True)
    base = table[table.alpha == 0.0].set_index("prompt_index").logprob_top
    table["delta_logprob_top"] = table.logprob_top - table.prompt_index.map(base)
    return SteeringResult(feature=check_feature("feature", feature, sae.d_sae), table=table,
                          top_tokens=effects.token.tolist(), tokens=tokens,
                          scale=float(unit.norm() / sae.W_dec[feature].detach().norm()))
