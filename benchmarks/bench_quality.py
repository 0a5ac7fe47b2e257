"""Feature quality of the lab's tied SAE (issues 12 and 22): the sparsity/reconstruction frontier, dense and
dead features at matched L0, for the lab's current recipe, an improved recipe and SAELens's standard SAE,
and ideas against the dense features within the tied ReLU SAE's inference math.

Every SAE here has 512 features (4 x d_model; 1024 for the 8x rows) on tiny's resid_post, is trained on the
shipped training rows and measured on 10,000 held-out rows of the test texts (`saelab.evaluate`) and on
held-out texts (`saelab.metrics.ce_loss_recovered`). Recipes are `Recipe` settings of one stacked trainer
(`train`): k SAEs, one per sparsity coefficient, trained side by side on the same batches; every default
of `Recipe` reproduces the lab's loop (`saelab.train_sae`: Adam, constant lr, loss MSE + coef * mean|f|).

    python benchmarks/bench_quality.py prepare               # collect and cache rows (layers 1-3)
    python benchmarks/bench_quality.py ablation              # layer 2, seed 0: each change alone, matched L0 30
    python benchmarks/bench_quality.py frontier --layers 1,2,3 --seeds 0,1
    python benchmarks/bench_quality.py frontier --quick      # layer 2, seed 0, fewer coefficients
    python benchmarks/bench_quality.py dense --layers 2 --seeds 0,1   # issue 22: ideas against dense features
    python benchmarks/bench_quality.py figure                # frontier.png (and dense_ideas.png) from the CSVs
    python benchmarks/bench_quality.py timing                # seconds per SAE and per 5-coef stacked sweep
    python benchmarks/bench_quality.py tables                # the grids at L0 20, 25, 30: CSVs + markdown

`frontier` and `dense` append one row per SAE to their grid CSV as it is measured and skip what is already
there, so an interrupted run resumes; each (recipe, layer, seed) grid starts from a fixed coefficient grid
and is extended (`extra_coefs`) until it brackets L0 15-45 with at least 3 points in L0 20-40, so every
interpolated number has measured points on both sides. The collected rows are cached in
benchmarks/_scratch/ (safetensors, gitignored); tables go to benchmarks/quality/*.csv.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("SAELAB_PROGRESS", "0")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = Path(__file__).resolve().parent
SCRATCH = HERE / "_scratch"
OUT = HERE / "quality"
CACHE = SCRATCH / "acts_tiny.safetensors"
LAYERS = (1, 2, 3)
N_FEATURES = 512
EVAL_ROWS = 10_000
CE_TEXTS = 4  # ~860 next-token predictions; each CE measurement is 3 forward passes with a 50k vocabulary
CE_L0_RANGE = (12.0, 60.0)  # CE loss recovered only for SAEs in this L0 range (around the matched L0s)
TARGET_L0 = 30.0
TARGETS = (20.0, 25.0, 30.0)  # the L0s the tables interpolate to (issue 22)


@dataclass(frozen=True)
class Recipe:
    """How one tied SAE (relu(x W^T + b_enc), x_hat = f W + b_dec) is trained. The defaults are the lab's
    loop today (saelab.train_sae with the lab's lr and batch size); each field is one change.

    rows: training rows used (the first `rows` in text order; None = all ~157k).
    steps, batch_size, lr, betas: Adam on batches from saelab.training.trainer.batch_indices(rows, batch_size, seed).
    lr_warmup / lr_decay: fractions of the steps: linear lr ramp from lr/warm-up-steps up to lr, and
        linear decay to 0 over the last fraction.
    l1_warmup: fraction of the steps over which the sparsity coefficient ramps linearly from 0.
    init_b_dec: "zeros" (today) | "mean" | "median" (coordinate-wise) of the training rows.
    init_norm: None (today: kaiming-uniform rows, norm ~1.7) or the norm every row of W is scaled to.
    init_b_enc: None (today: nn.Linear's uniform init) or a constant.
    init_w: "kaiming" (today) | "data": each row of W is the direction of a random training row minus
        the rows' mean (scaled to init_norm, default 1).
    init_density: None (today) or q: each b_enc_i is set so that feature i fires on a fraction q of
        8192 random training rows at init (b_enc_i = -(1-q)-quantile of w_i . x); applied last.
    center: train with the encoder reading x - b_dec (SAELens's apply_b_dec_to_input); folded into
        b_enc at the end (b_enc - W b_dec), so the SAE computes exactly relu(x W^T + b_enc) afterwards.
    unit_norm: renormalise each row of W to norm 1 after every step (tied: encoder and decoder alike).
    resample_every: every this many steps (until resample_until * steps), features that were dead
        (never fired) or dense (fired on more than resample_dense of the window's rows) are
        re-initialised towards rows the SAE reconstructs worst, at resample_scale x the mean norm of the
        other rows; their Adam state is reset.
    grad_clip: clip each SAE's gradient norm (0 = off).
    n_features: dictionary size (512 = 4 x d_model; 1024 = 8x).
    normalize: train on rows / s, s = saelab's row_scale (mean squared norm d_model, as TrainConfig.lab()),
        the SAEs keep s as input_scale so they read raw rows. Not only a coefficient rescale: Adam's steps are
        in parameter units, so the biases (which scale with the rows) move s times faster relative to their
        size (s = 3.02 on tiny's layer 2).
    l1_norm_weighted: the sparsity penalty is mean f_i * ||W_i|| (SAELens's decoder-norm-weighted L1; for the
        tied SAE the size of feature i's contribution f_i W_i to the reconstruction) instead of mean f_i.
    dense_l1: extra sparsity penalty coef * dense_l1 * mean(f_i) on the features whose running firing
        density (an exponential average over ~100 batches, `density_decay`) is above dense_target; nothing
        below it (0 = off).
    cofire: coefficient of an auxiliary term pushing dense features (running density above dense_target)
        apart: sum over pairs i != j of dense features of (fraction of the batch's rows where both fire) x
        cos(W_i, W_j)^2, divided by the number of dense features (0 = off).
    """
    rows: int | None = 20_000
    steps: int = 300
    batch_size: int = 256
    lr: float = 5e-3
    betas: tuple[float, float] = (0.9, 0.999)
    lr_warmup: float = 0.0
    lr_decay: float = 0.0
    l1_warmup: float = 0.0
    init_b_dec: str = "zeros"
    init_norm: float | None = None
    init_b_enc: float | None = None
    init_w: str = "kaiming"
    init_density: float | None = None
    center: bool = False
    unit_norm: bool = False
    resample_every: int = 0
    resample_until: float = 0.5
    resample_dense: float = 0.1
    resample_scale: float = 0.2
    grad_clip: float = 0.0
    n_features: int = N_FEATURES
    l1_norm_weighted: bool = False
    dense_l1: float = 0.0
    cofire: float = 0.0
    dense_target: float = 0.05
    density_decay: float = 0.99
    normalize: bool = False


LAB_TODAY = Recipe()


# ----------------------------------------------------------------------------- data
def prepare(layers=LAYERS) -> None:
    """Collect all training rows and the first 10,000 held-out rows of `layers`; cache them."""
    import saelab
    from safetensors.torch import save_file

    model = saelab.load_model("tiny", device="cpu")
    train = saelab.collect_activations(model, saelab.load_texts("train"), list(layers), progress=False)
    test = saelab.collect_activations(model, saelab.load_texts("test"), list(layers), max_tokens=EVAL_ROWS,
                                      progress=False)
    tensors = {}
    for layer in layers:
        tensors[f"train_{layer}"] = train[layer].rows.contiguous()
        tensors[f"test_{layer}"] = test[layer].rows.contiguous()
    SCRATCH.mkdir(parents=True, exist_ok=True)
    tmp = CACHE.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(CACHE)


def load_rows(layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training rows [~157k, 128], held-out rows [10000, 128]) of `layer`, from the cache."""
    from safetensors import safe_open

    if not CACHE.exists():
        prepare()
    with safe_open(str(CACHE), "pt") as f:
        return f.get_tensor(f"train_{layer}"), f.get_tensor(f"test_{layer}")


# ----------------------------------------------------------------------------- tied trainer
def init_params(recipe: Recipe, k: int, d: int, n: int, seed: int, rows: torch.Tensor):
    """Stacked initial parameters (W [k, n, d], b_enc [k, n], b_dec [k, d]); every SAE of the stack starts
    from saelab.TiedSAE(d, n, seed=seed) (the lab's init), then the recipe's init changes apply."""
    import saelab

    base = saelab.TiedSAE(d, n, seed=seed)
    W = base.encoder.weight.detach().clone()
    b_enc = base.encoder.bias.detach().clone()
    b_dec = base.decoder_bias.detach().clone()
    g = torch.Generator().manual_seed(seed)
    if recipe.init_w == "data":
        picks = rows[torch.randint(len(rows), (n,), generator=g)] - rows.mean(0)
        W = picks / picks.norm(dim=1, keepdim=True) * (recipe.init_norm or 1.0)
    elif recipe.init_w != "kaiming":
        raise ValueError(f"init_w: expected 'kaiming' or 'data', got {recipe.init_w!r}")
    if recipe.init_norm is not None:
        W = W / W.norm(dim=1, keepdim=True) * recipe.init_norm
    if recipe.init_b_enc is not None:
        b_enc = torch.full_like(b_enc, recipe.init_b_enc)
    if recipe.init_b_dec == "mean":
        b_dec = rows.mean(0)
    elif recipe.init_b_dec == "median":
        b_dec = rows.median(0).values
    elif recipe.init_b_dec != "zeros":
        raise ValueError(f"init_b_dec: expected 'zeros', 'mean' or 'median', got {recipe.init_b_dec!r}")
    if recipe.init_density is not None:
        sample = rows[torch.randint(len(rows), (8192,), generator=g)]
        pre = sample - b_dec if recipe.center else sample
        b_enc = -torch.quantile(pre @ W.T, 1.0 - recipe.init_density, dim=0)
    stack = [t.unsqueeze(0).repeat(k, *[1] * t.dim()).contiguous().requires_grad_(True) for t in (W, b_enc, b_dec)]
    return stack


def forward(W, b_enc, b_dec, x, center: bool):
    """x [B, d] -> (features [k, B, n], reconstruction [k, B, d]) of the k stacked SAEs."""
    xin = x.unsqueeze(0) - b_dec.unsqueeze(1) if center else x.unsqueeze(0).expand(W.shape[0], -1, -1)
    features = F.relu(torch.baddbmm(b_enc.unsqueeze(1), xin, W.transpose(1, 2)))
    return features, torch.baddbmm(b_dec.unsqueeze(1), features, W)


def schedule(recipe: Recipe, step: int) -> tuple[float, float]:
    """(lr multiplier, sparsity-coefficient multiplier) at `step` (0-based)."""
    s = recipe.steps
    lr_mult = 1.0
    warm, decay = round(recipe.lr_warmup * s), round(recipe.lr_decay * s)
    if warm and step < warm:
        lr_mult = (step + 1) / warm
    if decay and step >= s - decay:
        lr_mult = min(lr_mult, (s - step) / decay)
    l1_warm = round(recipe.l1_warmup * s)
    l1_mult = min(1.0, (step + 1) / l1_warm) if l1_warm else 1.0
    return lr_mult, l1_mult


def train(recipe: Recipe, rows: torch.Tensor, coefs, seed: int = 0):
    """Train len(coefs) tied SAEs with `recipe` on the same batches; returns (list of saelab.TiedSAE, seconds)."""
    from saelab.training.trainer import batch_indices

    data = rows if recipe.rows is None else rows[:recipe.rows]
    scale = 1.0
    if recipe.normalize:
        from saelab.training.initialise import row_scale
        scale = row_scale(data)
        data = data / scale
    k, (n_data, d) = len(coefs), data.shape
    W, b_enc, b_dec = init_params(recipe, k, d, recipe.n_features, seed, data)
    coef = torch.tensor([float(c) for c in coefs])
    optimizer = torch.optim.Adam([W, b_enc, b_dec], lr=recipe.lr, betas=recipe.betas)
    fired = torch.zeros(k, recipe.n_features)
    density = None  # running firing density [k, n] (only the density-gated terms read it)
    window_rows = 0
    start = time.perf_counter()
    for step, index in enumerate(batch_indices(n_data, recipe.batch_size, seed, steps=recipe.steps)):
        x = data[index]
        lr_mult, l1_mult = schedule(recipe, step)
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr * lr_mult
        features, recon = forward(W, b_enc, b_dec, x, recipe.center)
        mse = (recon - x).pow(2).mean(dim=(1, 2))
        loss = mse + coef * l1_mult * sparsity_penalty(features, W, recipe.l1_norm_weighted)
        if recipe.dense_l1 or recipe.cofire:
            density = running_density(density, features, recipe.density_decay)
            dense = density > recipe.dense_target
            if recipe.dense_l1:
                loss = loss + coef * l1_mult * recipe.dense_l1 * dense_only_l1(features, dense)
            if recipe.cofire:
                loss = loss + recipe.cofire * cofire_cosine_penalty(features, W, dense)
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()  # the SAEs are independent: each gets its own gradient
        if recipe.grad_clip:
            clip_per_sae([W, b_enc, b_dec], recipe.grad_clip)
        optimizer.step()
        with torch.no_grad():
            if recipe.unit_norm:
                W /= W.norm(dim=2, keepdim=True).clamp_min(1e-8)
            if recipe.resample_every:
                fired += (features > 0).sum(dim=1)
                window_rows += x.shape[0]
                if (step + 1) % recipe.resample_every == 0 and step + 1 < recipe.resample_until * recipe.steps:
                    resample(recipe, optimizer, (W, b_enc, b_dec), fired / window_rows, data, seed + step)
                    fired.zero_()
                    window_rows = 0
    seconds = time.perf_counter() - start
    saes = to_saes(W, b_enc, b_dec, recipe.center)
    for sae in saes:
        sae.input_scale = scale
    return saes, seconds


# The sparsity terms, one small function each (features [k, B, n], W [k, n, d]; each returns [k], one value
# per stacked SAE), so that any of them can move into saelab's trainer as it stands.
def sparsity_penalty(features, W, norm_weighted: bool):
    """The lab's L1, mean over rows and features of f_i; with `norm_weighted`, of f_i * ||W_i|| (SAELens's
    L1, weighted by the decoder row's norm: for a tied SAE, ||f_i W_i||, the size of the feature's
    contribution to the reconstruction, so a feature cannot buy a smaller penalty with a longer row)."""
    if norm_weighted:
        return (features * W.norm(dim=2).unsqueeze(1)).mean(dim=(1, 2))
    return features.mean(dim=(1, 2))


@torch.no_grad()
def running_density(density, features, decay: float):
    """Each feature's firing density [k, n], an exponential average over batches (`decay` per batch);
    the first batch's own density when `density` is None."""
    now = (features > 0).float().mean(dim=1)
    return now if density is None else density.mul_(decay).add_(now, alpha=1.0 - decay)


def dense_only_l1(features, dense):
    """Mean over rows and features of f_i on the features marked `dense` [k, n] (bool), 0 elsewhere: an L1
    that acts only above the target density and is off below it."""
    return (features * dense.unsqueeze(1)).mean(dim=(1, 2))


def cofire_cosine_penalty(features, W, dense):
    """Sum over pairs i != j of `dense` features of (share of the batch's rows where both fire) x
    cos(W_i, W_j)^2, divided by the number of dense features: pushes the rows of dense features that fire
    together apart (tied SAE: the decoder direction is also the encoder direction)."""
    active = (features > 0).float() * dense.unsqueeze(1)  # [k, B, n]
    cofiring = active.transpose(1, 2) @ active / features.shape[1]  # [k, n, n]
    cofiring = cofiring * (1.0 - torch.eye(W.shape[1]))
    unit = W / W.norm(dim=2, keepdim=True).clamp_min(1e-8)
    cosine = unit @ unit.transpose(1, 2)  # [k, n, n]
    return (cofiring * cosine.pow(2)).sum(dim=(1, 2)) / dense.sum(dim=1).clamp_min(1)


def clip_per_sae(params, max_norm: float) -> None:
    """Clip the gradient of each stacked SAE (dim 0 of every param) to norm `max_norm`."""
    sq = sum(p.grad.pow(2).flatten(1).sum(1) for p in params)  # [k]
    scale = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    for p in params:
        p.grad.mul_(scale.view(-1, *[1] * (p.dim() - 1)))


@torch.no_grad()
def resample(recipe: Recipe, optimizer, params, density: torch.Tensor, data: torch.Tensor, seed: int) -> None:
    """Re-initialise dead (density 0) and dense (> resample_dense) features of each stacked SAE.

    Anthropic's resampling (Towards Monosemanticity, 2023), per SAE: draw rows of a random sample of
    8192 training rows with probability proportional to their squared reconstruction error; the
    feature's row of W becomes the (x - b_dec) direction of its drawn row, at resample_scale x the mean
    norm of the other rows; b_enc = 0 (with init_density: the bias that makes it fire on that fraction
    of the sample); the Adam moments of the changed entries are zeroed."""
    W, b_enc, b_dec = params
    g = torch.Generator().manual_seed(seed)
    sample = data[torch.randint(len(data), (8192,), generator=g)]
    features, recon = forward(W, b_enc, b_dec, sample, recipe.center)
    err = (recon - sample).pow(2).sum(-1)  # [k, 8192]
    for i in range(W.shape[0]):
        bad = torch.nonzero((density[i] == 0) | (density[i] > recipe.resample_dense)).flatten()
        if len(bad) == 0:
            continue
        keep = torch.ones(W.shape[1], dtype=torch.bool)
        keep[bad] = False
        target = recipe.resample_scale * W[i, keep].norm(dim=1).mean() if keep.any() else 1.0
        picks = torch.multinomial(err[i] + 1e-12, len(bad), replacement=len(bad) > len(sample), generator=g)
        direction = sample[picks] - b_dec[i]
        W[i, bad] = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-8) * target
        b_enc[i, bad] = 0.0
        if recipe.init_density is not None:  # as at init: each new feature fires on init_density of the sample
            pre = (sample - b_dec[i] if recipe.center else sample) @ W[i, bad].T
            b_enc[i, bad] = -torch.quantile(pre, 1.0 - recipe.init_density, dim=0)
        for p, index in ((W, (i, bad)), (b_enc, (i, bad))):
            state = optimizer.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][index] = 0.0


def to_saes(W, b_enc, b_dec, center: bool):
    """The stacked parameters as saelab.TiedSAE objects (with `center`, b_enc absorbs -W b_dec)."""
    import saelab

    saes = []
    with torch.no_grad():
        for i in range(W.shape[0]):
            sae = saelab.TiedSAE(W.shape[2], W.shape[1], seed=0)
            bias = b_enc[i] - W[i] @ b_dec[i] if center else b_enc[i]
            sae.encoder.weight.copy_(W[i])
            sae.encoder.bias.copy_(bias)
            sae.decoder_bias.copy_(b_dec[i])
            saes.append(sae.eval())
    return saes


# ----------------------------------------------------------------------------- SAELens's standard SAE
@dataclass(frozen=True)
class SAELensRecipe:
    """SAELens's StandardTrainingSAE trained by its own SAETrainer, with SAELens's training tutorial's
    schedule: L1 warm-up over the first 5% of steps, lr decay to 0 over the last 20%, no lr warm-up;
    and SAELens's defaults otherwise: untied W_enc/W_dec initialised as transposes (kaiming-uniform,
    decoder rows at norm 0.1), b_dec subtracted from the input, b_enc = b_dec = 0, L1 weighted by the
    decoder-row norms, MSE summed over d_in, gradient-norm clipping at 1, Adam (0.9, 0.999), and
    normalize_activations "expected_average_only_in" (folded into the weights after training)."""
    rows: int | None = None
    steps: int = 614
    batch_size: int = 256
    lr: float = 5e-3
    l1_warmup: float = 0.05
    lr_decay: float = 0.2
    normalize_activations: str = "expected_average_only_in"


def train_saelens(recipe: SAELensRecipe, rows: torch.Tensor, coefs, seed: int = 0):
    """One SAELens SAE per coefficient (trained one after another, each on the batches of
    saelab.training.trainer.batch_indices(rows, batch_size, seed)); returns (list of SAEs wrapped for saelab's
    metrics, total seconds)."""
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    from saelab.training.trainer import batch_indices

    data = rows if recipe.rows is None else rows[:recipe.rows]
    saes, seconds = [], 0.0
    for c in coefs:
        torch.manual_seed(seed)
        cfg = StandardTrainingSAEConfig(d_in=data.shape[1], d_sae=N_FEATURES, l1_coefficient=float(c),
                                        l1_warm_up_steps=round(recipe.l1_warmup * recipe.steps),
                                        normalize_activations=recipe.normalize_activations)
        sae = StandardTrainingSAE(cfg)
        # the norm estimate reads its own ~100 batches first; training then reads exactly `steps` batches
        batches = (data[i] for i in batch_indices(len(data), recipe.batch_size, seed, steps=recipe.steps + 1000))
        trainer_cfg = SAETrainerConfig(total_training_samples=recipe.steps * recipe.batch_size,
                                       train_batch_size_samples=recipe.batch_size, lr=recipe.lr, lr_end=recipe.lr,
                                       lr_scheduler_name="constant", lr_decay_steps=round(recipe.lr_decay * recipe.steps),
                                       n_batches_for_norm_estimate=100, device="cpu")
        start = time.perf_counter()
        SAETrainer(trainer_cfg, sae, batches).fit()
        seconds += time.perf_counter() - start
        saes.append(saelens_as_tied().wrap(sae.eval()))
    return saes, seconds


def saelens_as_tied():
    """A saelab.TiedSAE subclass whose math is a SAELens SAE's, so saelab.evaluate and
    saelab.metrics.ce_loss_recovered measure both kinds with the same code."""
    import saelab

    class Wrapped(saelab.TiedSAE):
        @classmethod
        def wrap(cls, inner):
            obj = cls(inner.cfg.d_in, inner.cfg.d_sae, seed=0)
            obj.inner = inner
            return obj

        def _encode(self, x):
            return self.inner.encode(x)

        def _decode(self, features):
            return self.inner.decode(features)

    return Wrapped


# ----------------------------------------------------------------------------- measuring
def measure(sae, test_rows: torch.Tensor, layer: int, ce: bool, model=None, texts=None) -> dict:
    """saelab.evaluate on the held-out rows (+ CE loss recovered on CE_TEXTS held-out texts when `ce` and
    the SAE's L0 is in CE_L0_RANGE; else NaN)."""
    import saelab
    from saelab.metrics import ce_loss_recovered

    e = saelab.evaluate(sae, test_rows)
    row = {"fvu": e.fvu, "l0": e.l0, "dense": e.dense_fraction, "dead": e.dead_fraction, "ce_recovered": math.nan}
    if ce and CE_L0_RANGE[0] <= e.l0 <= CE_L0_RANGE[1]:
        row["ce_recovered"] = ce_loss_recovered(model, sae, texts, layer).score
    return row


def at_l0(rows: list[dict], target: float = TARGET_L0) -> dict:
    """The metrics of a coefficient grid interpolated to L0 = target (linear in log L0 between the two
    grid points that bracket it); NaN where the grid does not bracket the target."""
    pts = sorted((r for r in rows if r["l0"] > 0), key=lambda r: r["l0"])
    keys = [k for k in ("fvu", "dense", "dead", "ce_recovered") if pts and k in pts[0]]
    for lo, hi in zip(pts, pts[1:]):
        if lo["l0"] <= target <= hi["l0"]:
            t = (math.log(target) - math.log(lo["l0"])) / (math.log(hi["l0"]) - math.log(lo["l0"]) or 1.0)
            out = {k: lo[k] + t * (hi[k] - lo[k]) for k in keys}
            out["coef"] = math.exp(math.log(lo["coef"]) + t * (math.log(hi["coef"]) - math.log(lo["coef"])))
            return {**out, "l0": target}
    return {"l0": target, "coef": math.nan, **{k: math.nan for k in keys}}


def train_saelab(config, rows: torch.Tensor, coefs, seed: int = 0):
    """The shipped code itself: len(coefs) saelab.TiedSAE trained by saelab.training.trainer.train_stacked with
    `config` (a saelab.TrainConfig, e.g. TrainConfig.lab()); returns (SAEs, seconds)."""
    import saelab
    from saelab.training.trainer import train_stacked

    saes = [saelab.TiedSAE(rows.shape[1], N_FEATURES, seed=seed) for _ in coefs]
    run = train_stacked(saes, [rows] * len(coefs), [float(c) for c in coefs],
                        dataclasses.replace(config, seed=seed, progress=False))
    return saes, run.seconds


def run_grid(kind: str, recipe, layer: int, seed: int, coefs, ce: bool, ctx: dict, on_row=None) -> list[dict]:
    """Train one SAE per coefficient with `recipe` (kind "tied", "saelab" or "saelens", stacked where the
    trainer stacks) and measure each; `on_row(row)` is called as each SAE's row is ready."""
    train_rows, test_rows = ctx["rows"][layer]
    trainer = {"tied": train, "saelab": train_saelab, "saelens": train_saelens}[kind]
    saes, seconds = trainer(recipe, train_rows, coefs, seed)
    steps = recipe.n_steps(len(train_rows)) if kind == "saelab" else recipe.steps
    out = []
    for c, sae in zip(coefs, saes):
        row = {"layer": layer, "seed": seed, "coef": float(c), "tokens": steps * recipe.batch_size,
               "n_features": sae.d_sae if hasattr(sae, "d_sae") else N_FEATURES, "n_stacked": len(coefs),
               "train_seconds_all": seconds}
        row.update(measure(sae, test_rows, layer, ce, ctx.get("model"), ctx.get("texts")))
        out.append(row)
        if on_row is not None:
            on_row(row)
    return out


def extra_coefs(points: list[dict], lo: float = 15.0, hi: float = 45.0, inner=(20.0, 40.0), n_inner: int = 3):
    """Coefficients to add to a measured grid (rows with coef and l0) so that it brackets L0 lo..hi and has at
    least n_inner points inside `inner`: log coef interpolated piecewise-linearly in log L0 between the
    measured points (extrapolated along the end segments). [] when the grid already covers."""
    pts = sorted((math.log(r["l0"]), math.log(r["coef"])) for r in points if r["l0"] > 0)
    if len(pts) < 2:
        return []

    def coef_for(l0: float) -> float:
        x = math.log(l0)
        i = max(0, min(len(pts) - 2, max((j for j in range(len(pts) - 1) if pts[j][0] <= x), default=0)))
        (x0, c0), (x1, c1) = pts[i], pts[i + 1]
        slope = (c1 - c0) / (x1 - x0) if x1 - x0 > 1e-6 else -1.0
        slope = slope if slope < -0.2 else -1.0  # L0 falls as the coefficient grows; noise can say otherwise
        return math.exp(c0 + slope * (x - x0))

    l0s = [math.exp(x) for x, _ in pts]
    wanted = []
    if min(l0s) > lo:
        wanted.append(lo * 0.9)
    if max(l0s) < hi:
        wanted.append(hi * 1.1)
    inside = sum(inner[0] <= v <= inner[1] for v in l0s)
    for t in (24.0, 30.0, 36.0, 21.0, 27.0, 33.0, 39.0):
        if inside >= n_inner:
            break
        if all(abs(math.log(v / t)) > 0.08 for v in l0s):
            wanted.append(t)
            inside += 1
    have = {round(math.exp(c), 6) for _, c in pts}
    out = []
    for t in wanted:
        c = float(f"{coef_for(t):.3g}")
        if c > 0 and round(c, 6) not in have and c not in out:
            out.append(c)
    return out


def grid_coverage(points: list[dict], lo: float = 15.0, hi: float = 45.0, inner=(20.0, 40.0)) -> str:
    """'ok' when the grid's L0s bracket lo..hi with >= 3 points inside `inner`, else what is missing."""
    l0s = [r["l0"] for r in points if r["l0"] > 0]
    if not l0s:
        return "empty"
    missing = []
    if min(l0s) > lo:
        missing.append(f"min L0 {min(l0s):.1f} > {lo:g}")
    if max(l0s) < hi:
        missing.append(f"max L0 {max(l0s):.1f} < {hi:g}")
    inside = sum(inner[0] <= v <= inner[1] for v in l0s)
    if inside < 3:
        missing.append(f"{inside} points in L0 {inner[0]:g}-{inner[1]:g}")
    return "ok" if not missing else "; ".join(missing)


def read_rows(path: Path) -> list[dict]:
    """The rows of a grid CSV (written one SAE at a time by `append_row`); [] when there is none."""
    import pandas as pd

    return pd.read_csv(path).to_dict("records") if path.exists() and path.stat().st_size else []


def append_row(path: Path, row: dict) -> None:
    """Append one SAE's row to a grid CSV (header on the first row), flushed, so a killed run loses at most
    the stack in progress and a rerun skips what is done."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or not path.stat().st_size
    if not new:
        with open(path, newline="") as f:
            header = next(csv.reader(f))
        if list(row) != header:
            raise ValueError(f"{path}: columns {header} differ from the row's {list(row)}")
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def resumable_grid(path: Path, name: str, kind: str, recipe, layer: int, seed: int, coefs, ce: bool, ctx: dict,
                   extend: int = 2) -> list[dict]:
    """`run_grid` for the coefficients of `coefs` not yet in `path` for (name, layer, seed), each row appended
    as it is measured; then up to `extend` rounds of `extra_coefs` until the grid brackets L0 15-45 with
    at least 3 points in 20-40. Returns every row of (name, layer, seed)."""
    done = [r for r in read_rows(path) if r["recipe"] == name and r["layer"] == layer and r["seed"] == seed]

    def keep(row):
        row = {"recipe": name, **row}
        append_row(path, row)
        done.append(row)

    todo = list(coefs)
    for _ in range(1 + extend):
        todo = [c for c in todo if not any(math.isclose(c, r["coef"], rel_tol=1e-6) for r in done)]
        if todo:
            run_grid(kind, recipe, layer, seed, todo, ce, ctx, on_row=keep)
        todo = extra_coefs(done)
        if not todo:
            break
    print(f"{name} layer {layer} seed {seed}: coverage {grid_coverage(done)}; "
          + ", ".join(f"{r['coef']:g}->{r['l0']:.1f}" for r in sorted(done, key=lambda r: r["coef"])), flush=True)
    return done


def context(layers, ce: bool) -> dict:
    """Cached rows per layer, and (for CE loss recovered) the model and CE_TEXTS held-out texts."""
    import saelab

    ctx = {"rows": {layer: load_rows(layer) for layer in layers}}
    if ce:
        ctx["model"] = saelab.load_model("tiny", device="cpu")
        ctx["texts"] = saelab.load_texts("test")[:CE_TEXTS]
    return ctx


def write_csv(rows: list[dict], name: str) -> Path:
    """Write `rows` to benchmarks/quality/<name>.csv atomically."""
    import pandas as pd

    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.csv"
    tmp = path.with_suffix(".tmp")
    pd.DataFrame(rows).to_csv(tmp, index=False)
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------- experiments
BUDGET_STEPS, BUDGET_BATCH = 614, 256  # equal tokens: one epoch of the ~157k training rows at batch 256
LAB_AT_BUDGET = dataclasses.replace(LAB_TODAY, rows=None, steps=BUDGET_STEPS)
#: The improved recipe: what paid in the ablation (layer 2, seed 0), combined.
IMPROVED = dataclasses.replace(LAB_AT_BUDGET, init_norm=1.0, init_density=0.05, lr_decay=0.2, betas=(0.9, 0.99))
SAELENS = SAELensRecipe(steps=BUDGET_STEPS, batch_size=BUDGET_BATCH)
#: The frontier's starting grids (issue 22: L0 ~15-45 on tiny's layer 2, at least 3 points in L0 20-40; each
#: grid is extended by `extra_coefs` where a layer or seed needs it).
FRONTIER_GRIDS = {
    "lab today (77k tokens)": (12.0, 14.0, 16.0, 18.0, 20.0, 22.0, 25.0),
    "lab loop at equal tokens": (9.0, 11.0, 13.0, 15.0, 17.0, 19.5, 22.0),
    "improved": (5.5, 7.0, 8.5, 10.5, 13.0, 16.5, 22.0),
    "saelab TrainConfig.lab()": (1.75, 2.25, 2.75, 3.25, 4.0, 5.0, 6.5),  # normalised rows: coefficients ~3x smaller
    "SAELens standard": (1.0, 1.2, 1.3, 1.45, 1.65, 2.0, 2.5),
}
ABLATION_COEFS = (7.0, 10.0, 14.0, 20.0)  # around L0 30
ABLATION_SAELENS_COEFS = (0.7, 1.0, 1.4, 2.0)


def ablation_recipes() -> dict[str, Recipe]:
    """Each change alone on the lab's loop at the budget, then the combination (IMPROVED)."""
    r = dataclasses.replace
    base = LAB_AT_BUDGET
    return {
        "lab today (20k rows, 300 steps)": LAB_TODAY,
        "lab loop, all rows, budget": base,
        "b_dec init = mean": r(base, init_b_dec="mean"),
        "b_dec init = median": r(base, init_b_dec="median"),
        "b_enc init = 0": r(base, init_b_enc=0.0),
        "b_enc init: 5% density at init": r(base, init_density=0.05),
        "W rows init from data directions": r(base, init_w="data", init_b_dec="mean"),
        "W rows init at norm 1": r(base, init_norm=1.0),
        "W rows init at norm 0.1": r(base, init_norm=0.1),
        "centred encoder input (folded)": r(base, center=True),
        "unit-norm rows after each step": r(base, unit_norm=True),
        "L1 warm-up 10%": r(base, l1_warmup=0.1),
        "lr warm-up 5%": r(base, lr_warmup=0.05),
        "lr decay last 20%": r(base, lr_decay=0.2),
        "resample dead+dense every 100 (to 50%)": r(base, resample_every=100, resample_until=0.5, resample_scale=1.0),
        "Adam betas (0.9, 0.99)": r(base, betas=(0.9, 0.99)),
        "batch 128, 2x steps": r(base, batch_size=128, steps=2 * BUDGET_STEPS),
        "grad clip 1": r(base, grad_clip=1.0),
        "lr 1e-2": r(base, lr=1e-2),
        "IMPROVED (combination)": IMPROVED,
    }


def cmd_ablation(args) -> None:
    """Layer 2, seed 0: every recipe's grid, interpolated to L0 = 30; SAELens's standard SAE last."""
    torch.set_num_threads(args.threads)
    ctx = context([2], ce=args.ce)
    recipes = ablation_recipes()
    if args.only:
        recipes = {k: v for k, v in recipes.items() if any(o in k for o in args.only.split(","))}
    rows, grid = [], []
    for name, recipe in recipes.items():
        coefs = [float(c) for c in args.coefs.split(",")] if args.coefs else ABLATION_COEFS
        g = run_grid("tied", recipe, 2, 0, coefs, args.ce, ctx)
        grid += [{"recipe": name, **x} for x in g]
        rows.append({"recipe": name, "seconds_per_sae": g[0]["train_seconds_all"] / len(coefs), **at_l0(g)})
        print(rows[-1], flush=True)
    if not args.only or "SAELens" in args.only:
        g = run_grid("saelens", SAELENS, 2, 0, ABLATION_SAELENS_COEFS, args.ce, ctx)
        grid += [{"recipe": "SAELens standard", **x} for x in g]
        rows.append({"recipe": "SAELens standard", "seconds_per_sae": g[0]["train_seconds_all"] / len(ABLATION_SAELENS_COEFS),
                     **at_l0(g)})
        print(rows[-1], flush=True)
    write_csv(grid, f"ablation_grid{args.suffix}")
    print(write_csv(rows, f"ablation{args.suffix}"))


def frontier_recipes(quick: bool) -> dict[str, tuple[str, object, tuple]]:
    """name -> (kind, recipe, starting coefficient grid) for the frontier."""
    kinds = {"lab today (77k tokens)": ("tied", LAB_TODAY), "lab loop at equal tokens": ("tied", LAB_AT_BUDGET),
             "improved": ("tied", IMPROVED), "saelab TrainConfig.lab()": ("saelab", lab_config()),
             "SAELens standard": ("saelens", SAELENS)}
    return {name: (kind, recipe, FRONTIER_GRIDS[name][1::2] if quick else FRONTIER_GRIDS[name])
            for name, (kind, recipe) in kinds.items()}


def lab_config():
    """The shipped recipe: IMPROVED, on rows normalised to mean squared norm d_model, through saelab."""
    import saelab
    return saelab.TrainConfig.lab(progress=False)


def cmd_frontier(args) -> None:
    """The frontier (FVU, dense, dead, CE loss recovered vs L0) per layer, seed and recipe, one row per SAE
    appended to frontier_grid<suffix>.csv as it is measured (a rerun skips what is there)."""
    torch.set_num_threads(args.threads)
    layers = [2] if args.quick else [int(v) for v in args.layers.split(",")]
    seeds = [0] if args.quick else [int(v) for v in args.seeds.split(",")]
    ctx = context(layers, ce=args.ce)
    path = OUT / f"frontier_grid{args.suffix}.csv"
    for layer in layers:
        for seed in seeds:
            for name, (kind, recipe, coefs) in frontier_recipes(args.quick).items():
                if args.only and not any(o in name for o in args.only.split(",")):
                    continue
                resumable_grid(path, name, kind, recipe, layer, seed, coefs, args.ce, ctx, extend=0 if args.quick else 2)


LAB_NAME = "saelab TrainConfig.lab()"


def dense_recipes() -> dict[str, tuple[Recipe, tuple]]:
    """Issue 22: ideas against the dense features, each alone on top of IMPROVED (the bench's twin of
    saelab's TrainConfig.lab()), with a starting coefficient grid around L0 15-45 (extended where needed);
    the last rows combine the one that pays with more training."""
    r = dataclasses.replace
    grid = FRONTIER_GRIDS["improved"]
    return {
        "improved (baseline)": (IMPROVED, grid),
        "L1 weighted by row norm": (r(IMPROVED, l1_norm_weighted=True), tuple(round(1.6 * c, 2) for c in grid)),
        "L1 weighted by row norm + unit-norm rows": (r(IMPROVED, l1_norm_weighted=True, unit_norm=True), grid),
        "dense-only L1 x0.25 above 5%": (r(IMPROVED, dense_l1=0.25), grid),
        "dense-only L1 x0.5 above 5%": (r(IMPROVED, dense_l1=0.5), grid),
        "dense-only L1 x1 above 5%": (r(IMPROVED, dense_l1=1.0), tuple(round(0.7 * c, 2) for c in grid)),
        "co-firing dense cosine penalty 10": (r(IMPROVED, cofire=10.0), grid),
        "co-firing dense cosine penalty 100": (r(IMPROVED, cofire=100.0), grid),
        "8x dictionary (1024 features)": (r(IMPROVED, n_features=8 * 128), tuple(2 * c for c in grid)),
        "two epochs (1228 steps)": (r(IMPROVED, steps=2 * BUDGET_STEPS), grid),
        "dense-only L1 x0.5 + two epochs": (r(IMPROVED, dense_l1=0.5, steps=2 * BUDGET_STEPS), grid),
        "dense-only L1 x0.5 + 8x dictionary": (r(IMPROVED, dense_l1=0.5, n_features=8 * 128), tuple(2 * c for c in grid)),
        # on normalised rows, like TrainConfig.lab() (coefficients ~3x smaller on tiny)
        "improved, normalised rows (= TrainConfig.lab())": (r(IMPROVED, normalize=True), FRONTIER_GRIDS[LAB_NAME]),
        "dense-only L1 x0.5, normalised rows": (r(IMPROVED, normalize=True, dense_l1=0.5), FRONTIER_GRIDS[LAB_NAME]),
        "dense-only L1 x0.5 + two epochs, normalised rows": (
            r(IMPROVED, normalize=True, dense_l1=0.5, steps=2 * BUDGET_STEPS), FRONTIER_GRIDS[LAB_NAME]),
    }


def cmd_dense(args) -> None:
    """Issue 22 item 2: each idea of `dense_recipes` alone, per layer and seed, one row per SAE appended to
    dense_grid<suffix>.csv (resumable); `tables` interpolates them to L0 20, 25, 30."""
    torch.set_num_threads(args.threads)
    layers = [int(v) for v in args.layers.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    ctx = context(layers, ce=args.ce)
    path = OUT / f"dense_grid{args.suffix}.csv"
    for layer in layers:
        for seed in seeds:
            for name, (recipe, coefs) in dense_recipes().items():
                if args.only and not any(o in name for o in args.only.split(",")):
                    continue
                resumable_grid(path, name, "tied", recipe, layer, seed, coefs, args.ce, ctx)


def cmd_figure(args) -> None:
    """benchmarks/quality/frontier.png (every frontier grid: FVU, CE loss recovered and dense fraction against
    L0, one column per layer) and, when the dense ideas were run, dense_ideas.png (the same per idea)."""
    import pandas as pd

    colors = {"lab today (77k tokens)": "tab:gray", "lab loop at equal tokens": "tab:blue",
              "improved": "tab:green", "saelab TrainConfig.lab()": "tab:purple", "SAELens standard": "tab:red"}
    for pattern, name, title in (
            ("frontier_grid", "frontier", "tiny resid_post, 512 features: frontier on 10k held-out rows"),
            ("dense_grid", "dense_ideas", "tiny resid_post: ideas against dense features, each alone on 'improved'")):
        files = sorted(OUT.glob(f"{pattern}{args.suffix}*.csv"))  # no suffix: every run's grid
        if files:
            grid = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
            print(plot_grid(grid, colors, OUT / f"{name}{args.suffix}.png", title))


def plot_grid(grid, colors: dict, path: Path, title: str) -> Path:
    """FVU, CE loss recovered and dense fraction (rows) against L0 (log), one column per layer, one line per
    recipe and seed (solid: seed 0, dashed: seed 1); the grey band is L0 20-40."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sorted(grid.layer.unique())
    metrics = [m for m in ("fvu", "ce_recovered", "dense") if m in grid]
    labels = {"fvu": "FVU (held-out, lower is better)", "ce_recovered": "CE loss recovered (higher is better)",
              "dense": "dense fraction (>10% of tokens)"}
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    import itertools

    palette = [c for c in plt.rcParams["axes.prop_cycle"].by_key()["color"] if c not in colors.values()]
    cycle = itertools.cycle(palette + ["black", "gold", "magenta", "lime", "navy", "teal", "salmon", "sienna"])
    colors = {name: colors.get(name) or next(cycle) for name in grid.recipe.unique()}
    fig, axes = plt.subplots(len(metrics), len(layers), figsize=(5.2 * len(layers), 3.6 * len(metrics)),
                             squeeze=False, sharex=True)
    for j, layer in enumerate(layers):
        for i, metric in enumerate(metrics):
            ax = axes[i, j]
            for (name, seed), g in grid[(grid.layer == layer) & (grid.l0 > 8) & (grid.l0 < 80)].groupby(
                    ["recipe", "seed"], sort=False):
                g = g.sort_values("l0").dropna(subset=[metric])
                ax.plot(g.l0, g[metric], marker="o", ms=3, color=colors[name], alpha=0.9 if seed == 0 else 0.5,
                        ls="-" if seed == 0 else "--", label=name if seed == 0 else None)
            ax.axvspan(20, 40, color="0.92", zorder=0)
            ax.set(xscale="log", title=f"layer {layer}" if i == 0 else None, ylabel=labels[metric] if j == 0 else None)
            ax.set_xticks([10, 15, 20, 25, 30, 40, 60])
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.grid(alpha=0.3)
            if metric == "ce_recovered":
                ax.set_ylim(max(0.5, float(grid[metric].min()) - 0.02), 1.0)
        axes[-1, j].set_xlabel("L0 (active features per token, log)")
    legend = {}  # every recipe once, in the order it first appears in any column
    for ax in axes[0]:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(name, handle)
    fig.legend(list(legend.values()), list(legend), fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 0.95))
    fig.suptitle(f"{title}\n(solid: seed 0, dashed: seed 1; grey band: L0 20-40)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def cmd_timing(args) -> None:
    """Seconds to train at the budget: this file's loop (the recipe) for 1 SAE and for 5 stacked SAEs, and
    saelab's own trainers (train_sae, sparsity_sweep) at the same steps, which the recipe's settings add
    no per-step work to (init, schedules and resampling are outside the per-step matmuls)."""
    import saelab

    torch.set_num_threads(args.threads)
    train_rows, _ = load_rows(2)
    out = []
    for name, fn in [
        ("bench loop, IMPROVED, 1 SAE", lambda: train(IMPROVED, train_rows, [10.0])[1]),
        ("bench loop, IMPROVED, 5 stacked", lambda: train(IMPROVED, train_rows, [5, 7, 10, 14, 20])[1]),
        ("saelab.train_sae, 1 SAE", lambda: saelab.train_sae(
            saelab.TiedSAE(128, N_FEATURES, seed=0), train_rows, sparsity_coef=10.0, lr=5e-3, batch_size=BUDGET_BATCH,
            steps=BUDGET_STEPS, progress=False).seconds),
        ("saelab.sparsity_sweep, 5 stacked", lambda: saelab.sparsity_sweep(
            train_rows, coefs=[5, 7, 10, 14, 20], steps=BUDGET_STEPS, lr=5e-3, batch_size=BUDGET_BATCH,
            progress=False).seconds),
    ]:
        times = [fn() for _ in range(args.repeats)]
        out.append({"what": name, "steps": BUDGET_STEPS, "batch": BUDGET_BATCH, "threads": args.threads,
                    "median_seconds": sorted(times)[len(times) // 2], "min_seconds": min(times)})
        print(out[-1], flush=True)
    write_csv(out, f"timing{args.suffix}")


def cmd_tables(args) -> None:
    """Every *_grid*.csv (ablation, frontier, dense) interpolated to L0 = 20, 25 and 30 (linear in log L0
    between the two grid points on either side): written as *_at_l0_<L0>.csv, and printed as one markdown
    table per grid kind (a row per recipe, layer and seed; FVU / dense / dead / CE at each L0), with the
    number of dense features and each grid's coverage (brackets L0 15-45 with >= 3 points in 20-40)."""
    import pandas as pd

    cols = ["recipe", "layer", "seed", "coef", "fvu", "dense", "dead", "ce_recovered", "seconds_per_sae", "coverage"]
    for pattern in ("ablation_grid", "frontier_grid", "dense_grid"):
        files = sorted(OUT.glob(f"{pattern}{args.suffix}*.csv"))
        if not files:
            continue
        grid = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
        wide = {}
        for target in TARGETS:
            rows = []
            for (recipe, layer, seed), g in grid.groupby(["recipe", "layer", "seed"], sort=False):
                points = g.to_dict("records")
                stacked = g.n_stacked if "n_stacked" in g else g.coef.nunique()
                rows.append({"recipe": recipe, "layer": layer, "seed": seed, **at_l0(points, target),
                             "seconds_per_sae": float((g.train_seconds_all / stacked).median()),
                             "coverage": grid_coverage(points)})
                n = int(g.n_features.iloc[0]) if "n_features" in g else N_FEATURES
                wide.setdefault((recipe, layer, seed), {"n": n, "coverage": rows[-1]["coverage"]})[target] = rows[-1]
            table = pd.DataFrame(rows)
            table = table[[c for c in cols if c in table]]
            write_csv(table.to_dict("records"), pattern.replace("_grid", f"_at_l0_{target:g}") + args.suffix)
        print(f"\n{pattern}: FVU / dense (count of features) / dead / CE loss recovered, interpolated to L0 "
              + ", ".join(f"{t:g}" for t in TARGETS) + "\n")
        print("| recipe | layer | seed | " + " | ".join(f"L0 {t:g}" for t in TARGETS) + " | grid |")
        print("|---|---|---|" + "---|" * (len(TARGETS) + 1))
        for (recipe, layer, seed), v in wide.items():
            cells = [cell(v[t], v["n"]) for t in TARGETS]
            print(f"| {recipe} | {layer} | {seed} | " + " | ".join(cells) + f" | {v['coverage']} |")


def cell(r: dict, n_features: int) -> str:
    """'FVU / dense% (count) / dead% / CE' of one interpolated row, '—' where the grid does not bracket."""
    if math.isnan(r.get("fvu", math.nan)):
        return "—"
    ce = "—" if math.isnan(r.get("ce_recovered", math.nan)) else f"{r['ce_recovered']:.3f}"
    return (f"{r['fvu']:.3f} / {100 * r['dense']:.1f}% ({r['dense'] * n_features:.0f}) / {100 * r['dead']:.1f}% / {ce}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["prepare", "ablation", "frontier", "dense", "figure", "timing", "tables"])
    parser.add_argument("--layers", default="1,2,3")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--quick", action="store_true", help="layer 2, seed 0, every other coefficient")
    parser.add_argument("--no-ce", dest="ce", action="store_false", help="skip CE loss recovered (faster)")
    parser.add_argument("--only", default="", help="ablation, frontier: comma-separated substrings of recipe names")
    parser.add_argument("--coefs", default="", help="ablation: comma-separated coefficient grid (tied recipes)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timing: repeats (median)")
    parser.add_argument("--suffix", default="", help="appended to output file names")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare()
    else:
        commands = {"ablation": cmd_ablation, "frontier": cmd_frontier, "dense": cmd_dense, "figure": cmd_figure, "timing": cmd_timing,
                    "tables": cmd_tables}
        commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
