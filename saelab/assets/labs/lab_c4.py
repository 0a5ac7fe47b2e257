# Lab C.4 "Feature Extraction with SAEs": the one source of notebooks/lab_c4.ipynb (exercises)
# and solutions/lab_c4.ipynb (solutions). Edit this file, then run `saelab notebooks build` and
# `saelab notebooks execute`; `saelab notebooks check` fails if the notebooks drift from it.
# Format: Jupytext percent cells (`# %% [markdown]`, `# %% tags=["check"]`; see saelab/notebooks.py), `# BEGIN SOLUTION` / `# END SOLUTION`).

# %% [markdown]
# # Lab C.4: Feature Extraction with Sparse Autoencoders
#
# BEGIN SOLUTION
# **Solution notebook.** Every exercise is filled in and every check passes; the outputs come from
# `saelab notebooks execute` on the model named by `$SAELAB_MODEL` (the embedded `tiny` model by default).
# STUB: **Exercise notebook.** Parts 1 to 5, 7 and 8 each hold one exercise, numbered like its part: fill in the cells
# STUB: marked `raise NotImplementedError()`, then run the check cell below each one. A check prints a line
# STUB: starting with ✅ when your code is right; otherwise the cell fails with a message starting with ❌ that
# STUB: says what is wrong and hints at the usual mistake (so "Run all" stops at the first unfinished exercise).
# END SOLUTION
#
# A **sparse autoencoder** (SAE) rewrites a model's activation vector as a sparse combination of many
# learned directions, its *features*, which are often easier to interpret than the model's neurons.
# In this lab you will:
#
# 1. implement a tied-weight SAE (Part 1, exercise 1),
# 2. collect activations from a transformer, and see why the BOS token's rows are left out (Part 2, exercise 2),
# 3. train SAEs at several sparsity levels and read the trade-off on held-out text (Part 3, exercise 3),
# 4. find features that fire together (Part 4, exercise 4),
# 5. compare SAEs on an early and a late layer, fairly (Part 5, exercise 5),
# 6. look closely at a few features (Part 6, questions only),
# 7. switch a feature on: add its direction to the model's activation and read what the model writes (Part 7, exercise 7),
# 8. switch a feature off: remove its contribution and measure which tokens it helped predict (Part 8, exercise 8).
#
# The words and units of the tables (MSE, L1, L0, FVU, CE loss recovered, ...) are in the glossary in Part 3b.
#
# **How this notebook works.** After each exercise, the notebook carries on with `saelab`'s reference
# implementation, not yours, so if you are stuck on one exercise you can still run and learn from the rest.
#
# **Model.** By default the lab uses `tiny`, a small GPT-2-style model (4 layers, d_model 128) that ships
# with `saelab` and runs offline on a laptop CPU in a few minutes. With internet access, set
# `SAELAB_MODEL=gpt2-small` before starting Jupyter to run the same lab on GPT-2 small (a GPU helps).

# %% [markdown]
# ## Setup
#
# The first cell does nothing when `saelab` is installed. When it is missing (on Colab, or in a kernel of
# another environment), it installs the course's own copy named by `INSTALL_SOURCE` (a wheel or a git URL,
# filled in by your instructor), or, when there is none, stops and says how to install saelab. It never asks
# a package index for a name. The second cell loads the model on the best device available (CUDA, then
# Apple MPS, then CPU).

# %%
# Install saelab if this kernel lacks it, from INSTALL_SOURCE only: the course's wheel (a URL or a path)
# or git URL, which `saelab notebooks build --install-source ...` writes into the line below.
import importlib
import importlib.metadata
import pathlib
import subprocess
import sys

INSTALL_SOURCE = None
try:  # an installed saelab distribution: a folder named saelab/ beside the notebook (a clone) does not count
    importlib.metadata.version("saelab")
except importlib.metadata.PackageNotFoundError:
    if INSTALL_SOURCE is None:
        raise ModuleNotFoundError(
            "saelab is not installed in this kernel's Python (" + sys.executable + ").\n"
            "Install it from a copy of the saelab repository, as its README says, in a terminal:\n"
            "    python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e \".[notebooks]\"\n"
            "then open this notebook with that environment's Jupyter (jupyter lab notebooks/lab_c4.ipynb).\n"
            "On Colab: set INSTALL_SOURCE in this cell to the wheel or git URL your course gives, and run it again.") from None
    # with the saelens extra (the lab compares its SAE with a SAELens one) and the browser extra (Part 6b's
    # live feature browser: ipywidgets, anywidget); a path becomes a file:// URL
    url = INSTALL_SOURCE if "://" in INSTALL_SOURCE else pathlib.Path(INSTALL_SOURCE).resolve().as_uri()
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "saelab[saelens,browser] @ " + url])
    importlib.invalidate_caches()

# %%
import matplotlib.pyplot as plt
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from IPython.display import display

import saelab
from saelab import batch_indices, checks, format_table, notebook_layer

MODEL_NAME = saelab.default_model_name()  # $SAELAB_MODEL, else "tiny" (embedded, offline)
device = saelab.resolve_device()          # cuda, then mps, then cpu
model = saelab.load_model(MODEL_NAME, device=device)
TINY = MODEL_NAME == "tiny"

# Sizes and recipe: the same settings `saelab run` uses (every shipped training row on "tiny";
# $SAELAB_LAB_SIZE=small shrinks them, as the tests do).
LAB = saelab.lab_settings(MODEL_NAME)
RECIPE = LAB.train                         # saelab.TrainConfig.lab(): the lab's training recipe (Part 3c)
MAX_TOKENS = LAB.max_tokens                # training rows (tokens) per layer; None: all the texts give
EVAL_TOKENS = LAB.eval_tokens              # held-out rows
CE_TEXTS = LAB.ce_texts                    # held-out texts for "CE loss recovered"
N_FEATURES = LAB.n_features_per_dim * model.cfg.d_model   # dictionary size: 4 x d_model, as in the seed

train_texts = saelab.load_texts("train")   # shipped prose and code; "test" is held out
test_texts = saelab.load_texts("test")
print(f"{MODEL_NAME}: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, on {device}; "
      f"{len(train_texts)} training texts, {len(test_texts)} held-out texts")

# %% [markdown]
# ## Part 1 (exercise 1): The tied sparse autoencoder
#
# **What.** Implement `encode`, `decode` and `compute_loss` of a tied-weight ReLU SAE:
#
# $$f = \mathrm{ReLU}(x W^\top + b_{enc}), \qquad \hat{x} = f W + b_{dec}, \qquad
# \mathcal{L} = \underbrace{\mathrm{mean}\big((\hat{x} - x)^2\big)}_{\text{recon}}
# + \lambda \, \underbrace{\mathrm{mean}\,|f|}_{\text{sparsity}}$$
#
# with $W$ = `self.encoder.weight` of shape `[n_features, d_model]`. *Tied* means the decoder reuses the
# encoder's weight, transposed, instead of learning its own; only the decoder bias $b_{dec}$ is separate.
#
# **Why.** The reconstruction term keeps the features faithful to the activation; the L1 term pushes most
# features to zero on each input, so each token is explained by a few features.
#
# **Difficulty:** ★☆☆ · **Time:** about 15 minutes
#
# <details><summary>Hint 1</summary>
#
# `self.encoder(x)` already computes `x @ W.T + b_enc`; `F.linear(f, A, b)` computes `f @ A.T + b`.
# </details>
# <details><summary>Hint 2</summary>
#
# `compute_loss` returns the loss as a **tensor** (so that `loss.backward()` works) and the stats as Python
# floats (`.item()`). "sparsity" is the **mean** of `|features|` over rows and features, not a sum;
# "n_active" is the mean number of features with a value above 0 per row.
# </details>

# %%
class MySAE(nn.Module):
    """A tied-weight ReLU sparse autoencoder: the decoder reuses the encoder's weight."""

    def __init__(self, d_model, n_features):
        super().__init__()
        self.d_model, self.n_features = d_model, n_features
        self.encoder = nn.Linear(d_model, n_features, bias=True)  # W [n_features, d_model], b_enc [n_features]
        self.decoder_bias = nn.Parameter(torch.zeros(d_model))    # b_dec [d_model]
        nn.init.kaiming_uniform_(self.encoder.weight, nonlinearity="relu")

    def encode(self, x):
        """x [..., d_model] -> features [..., n_features]."""
        # BEGIN SOLUTION
        return F.relu(self.encoder(x))
        # END SOLUTION

    def decode(self, features):
        """features [..., n_features] -> reconstruction [..., d_model]."""
        # BEGIN SOLUTION
        return F.linear(features, self.encoder.weight.T, self.decoder_bias)
        # END SOLUTION

    def forward(self, x):
        features = self.encode(x)
        return self.decode(features), features

    def compute_loss(self, x, sparsity_coef=1e-3):
        """(loss, {"recon": ..., "sparsity": ..., "n_active": ...}) for a batch x [batch, d_model]."""
        # BEGIN SOLUTION
        reconstruction, features = self.forward(x)
        recon = F.mse_loss(reconstruction, x)
        sparsity = features.abs().mean()
        n_active = (features > 0).sum(dim=-1).float().mean()
        return recon + sparsity_coef * sparsity, {
            "recon": recon.item(), "sparsity": sparsity.item(), "n_active": n_active.item()}
        # END SOLUTION

# %% tags=["check"]
checks.check_sae(MySAE)

# %% [markdown]
# From here on the notebook uses `saelab.TiedSAE`: the same math, plus input validation, a seeded
# initialisation (`seed=0` gives the same weights every run) and saving in the SAELens format.

# %%
sae = saelab.TiedSAE(model.cfg.d_model, N_FEATURES, seed=0)
loss, stats = sae.compute_loss(torch.randn(8, model.cfg.d_model))
print(sae, stats)

# %% [markdown]
# ## Part 2 (exercise 2): Collecting activations, without the BOS rows
#
# **What.** Write `collect_rows(model, texts, layer)`: run the model on each text, take the residual
# stream after block `layer` (`resid_post`) at every token, leave out the first position (the BOS token
# `<|endoftext|>` that `model.to_tokens` puts in front), and stack the rows into one tensor
# `[n_tokens, d_model]`.
#
# **Why.** The SAE learns from these rows. The seed notebook kept the BOS rows; below you will see why
# that hurts.
#
# **Difficulty:** ★☆☆ · **Time:** about 10 minutes
#
# <details><summary>Hint</summary>
#
# `_, cache = model.run_with_cache(model.to_tokens(text))`; then `cache["resid_post", layer]` has shape
# `[1, pos, d_model]`, and position 0 is BOS.
# </details>

# %%
def collect_rows(model, texts, layer):
    """resid_post rows of `layer` for every token of every text except BOS: [n_tokens, d_model]."""
    rows = []
    with torch.no_grad():
        for text in texts:
            # BEGIN SOLUTION
            _, cache = model.run_with_cache(model.to_tokens(text))
            rows.append(cache["resid_post", layer][0, 1:])  # [pos - 1, d_model]: BOS dropped
            # END SOLUTION
    return torch.cat(rows, dim=0)

# %% tags=["check"]
checks.check_activations(collect_rows, model)

# %% [markdown]
# **Why leave BOS out?** Every text starts with the same BOS token, and at position 0 the model can attend
# to nothing else: the BOS row is **the same vector in every text**. It carries no information about the
# text, yet the seed added one copy per prompt to the training data. In trained models such as GPT-2 it is
# also an outlier: many models use BOS as a resting place for attention, and its residual norm is many
# times the other tokens'. Here are the rows at the layer we will study (the seed's layer 6 of 12, at the
# same relative depth of this model):

# %%
LAYER = notebook_layer(model)
# the first 128 tokens of 50 held-out texts are enough to compare norms
with_bos = saelab.collect_activations(model, test_texts[:50], [LAYER], exclude_bos=False, context_length=128)[LAYER]
norms = with_bos.rows.norm(dim=-1)
is_bos = with_bos.position == 0
bos_rows = with_bos.rows[is_bos]
bos_spread = (bos_rows - bos_rows[0]).norm(dim=-1).max().item()
bos_ratio = (norms[is_bos].mean() / norms[~is_bos].mean()).item()
print(f"layer {LAYER}, {int(is_bos.sum())} texts: the BOS rows differ from each other by at most {bos_spread:.1e} "
      f"(identical); their norm is {norms[is_bos].mean():.1f}, {bos_ratio:.2f}x the mean of the other rows "
      f"({norms[~is_bos].mean():.1f}).")

fig, ax = plt.subplots(figsize=(8, 3))
bins = torch.logspace(torch.log10(norms.min()).item(), torch.log10(norms.max() * 1.05).item(), 60).numpy()
ax.hist(norms[~is_bos].numpy(), bins=bins, label="other tokens")
ax.hist(norms[is_bos].numpy(), bins=bins, color="tab:red", label="BOS")
ax.set(xscale="log", yscale="log", xlabel=f"L2 norm of resid_post, layer {LAYER}", ylabel="rows")
ax.legend()
plt.show()
assert bos_spread < 1e-2 * norms[is_bos].mean(), "every text's BOS row should be the same vector"

# %% [markdown]
# Kept in, the BOS rows are repeated copies of one point: the SAE spends capacity on reconstructing it
# (on GPT-2, whose BOS norm dwarfs the rest, they dominate the mean squared error) and every metric is
# skewed by it. `saelab.collect_activations` drops BOS rows by default (`exclude_bos=True`), batches the
# texts, and records where each row came from (for the examples in Parts 4 and 6).
#
# We collect training rows from the shipped training texts and held-out rows from the test texts
# (held out from the SAEs' training *and* from the tiny model's).

# %%
acts = saelab.collect_activations(model, train_texts, [LAYER], max_tokens=MAX_TOKENS)[LAYER]
test_acts = saelab.collect_activations(model, test_texts, [LAYER], max_tokens=EVAL_TOKENS)[LAYER]
print(acts)
print(test_acts)

# %% [markdown]
# ## Part 3 (exercise 3): Sparsity levels
#
# ### 3a. The training loop
#
# **What.** Write the body of the training loop for one sparsity coefficient: for each mini-batch, compute
# the loss, backpropagate, take an Adam step, and record the loss.
#
# **Why.** Every SAE in this lab is trained by this loop. The batches come from
# `batch_indices(n_rows, batch_size, seed, epochs)`, a seeded shuffle, so the same seed gives the same
# SAE (and the check can compare your loop with `saelab.train_sae` step for step).
#
# **Difficulty:** ★☆☆ · **Time:** about 10 minutes
#
# <details><summary>Hint</summary>
#
# Four lines: clear the gradients, `sae.compute_loss(rows[batch], sparsity_coef=sparsity_coef)`, backward,
# step; then append the loss as a float (`loss.item()`).
# </details>

# %%
def train_one(sae, rows, sparsity_coef, lr=1e-3, batch_size=64, epochs=1, seed=0):
    """Train `sae` in place on rows [n, d_model] with Adam; return the loss of every step (floats)."""
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    losses = []
    for batch in batch_indices(len(rows), batch_size, seed=seed, epochs=epochs):
        # BEGIN SOLUTION
        optimizer.zero_grad()
        loss, _ = sae.compute_loss(rows[batch], sparsity_coef=sparsity_coef)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        # END SOLUTION
    return losses

# %% tags=["check"]
checks.check_training_loop(train_one)

# %% [markdown]
# ### 3b. The sweep
#
# `saelab.sparsity_sweep` trains one SAE per coefficient with this loop (all of them at once, stacked
# into one model, on the same batches) and measures each on the **held-out** rows:
# FVU (fraction of variance unexplained: 0 is perfect), L0 (active features per token), dead and dense
# feature fractions, and *CE loss recovered* (1 = splicing the SAE's reconstruction into the model costs
# nothing in next-token loss, 0 = as bad as zeroing the activation).
#
# **Which coefficients?** The penalty's effect depends on the scale of the rows: multiply every activation
# by 10 and the squared error grows 100-fold while the L1 term grows only 10-fold, so a coefficient tuned on
# one model or layer would mean something else on another (GPT-2's residual norms are several times
# tiny's, and grow with depth). The lab's recipe (`RECIPE`, Part 3c) therefore divides the rows by one
# number `s` so that their mean squared norm is $d_{model}$, trains the seed's SAE on those, and stores
# `s` in the SAE (`sae.input_scale`): `encode` divides by it and `decode` multiplies by it, so the SAE
# still reads and writes raw activations. On these normalised rows the coefficients below mean the same on
# every model. The seed swept 1e-2, 1e-3 and 1e-4: with the penalty being the *mean* of |features| over
# the whole dictionary, those are far too weak. Even 0.1, a hundred times the seed's 1e-3 (the first row
# below), leaves L0 high, so we sweep from 0.1 to 8. Always check L0. (Below about 0.1 there is next to
# no penalty, nothing pins the features down, and at the recipe's learning rate training never settles:
# the last bits of the CPU's rounding grow into other features, so such an SAE is not reproducible.)
#
# **Glossary: the numbers in the tables.** With $x$ a row ($d_{model}$ numbers), $\hat{x}$ its
# reconstruction and $f$ its features, over the evaluation rows:
#
# - **MSE** (`mse`; the `recon` of `compute_loss`): the mean of $(x - \hat{x})^2$ over rows *and dimensions*,
#   i.e. the squared error per dimension, in squared activation units. SAELens reports the sum over dimensions
#   instead: its MSE is saelab's times $d_{model}$.
# - **L1** (`l1`): the mean over rows of $\sum_i |f_i|$. The training penalty `sparsity` is its mean over
#   features, $\mathrm{mean}\,|f|$ = L1 / n_features.
# - **L0** (`l0`): the mean number of active features ($f_i \neq 0$; for ReLU features, $f_i > 0$) per row: a count.
# - **FVU** (`fvu`): the fraction of variance unexplained, $\sum (x - \hat{x})^2 / \sum (x - \bar{x})^2$ with
#   $\bar{x}$ each dimension's mean: 0 is perfect, 1 is no better than always predicting the mean row.
#   **Above 1** the reconstructions are farther from the rows than the mean row is: worse than knowing nothing
#   about the token. It happens when an SAE meets rows unlike those it was fitted to (Part 3d shows one: an SAE
#   that memorised a few dozen rows decodes new rows into vectors of the wrong size and direction).
# - **Explained variance** (`explained_variance`): 1 - FVU.
# - **Dead fraction** (`dead_fraction`): the share of features never active on these rows; **dense fraction**
#   (`dense_fraction`): the share active on more than 10% of them.
# - **CE loss recovered** (`ce_loss_recovered`): $(CE_{zero} - CE_{spliced}) / (CE_{zero} - CE_{clean})$, from the
#   model's mean next-token cross-entropy in **nats** (natural log) per token: clean, with the SAE's
#   reconstruction spliced in (`ce_loss_spliced`), and with the activation zeroed. 1 means the SAE costs
#   nothing, 0 as bad as deleting the activation. It is a ratio, without unit; the CE columns are in nats.

# %%
COEFS = list(LAB.coefs)  # [0.1, 0.5, 1, 2, 4, 8]
COEF = LAB.coef          # 4: the SAE we study in Parts 4 to 6
sweep = saelab.sparsity_sweep(acts, coefs=COEFS, eval_activations=test_acts, config=RECIPE, n_features=N_FEATURES,
                              model=model, texts=test_texts[:CE_TEXTS])
print(f"rows scaled by 1/{sweep.saes[COEF].input_scale:.3g} for training (sae.input_scale)")
display(sweep)
display(sweep.plot())
l0 = sweep.table.sort_values("coef")["l0"].tolist()
assert l0[-1] < l0[0], "the largest coefficient should give fewer active features than the smallest"

# %% [markdown]
# **Question.** Read the plot: what does a larger sparsity coefficient buy, and what does it cost? Which
# coefficient would you pick to interpret features, and why not the smallest?
#
# BEGIN SOLUTION
# **Answer.** A larger coefficient makes the code sparser (lower L0: fewer features per token, each one
# easier to read) at the cost of reconstruction (higher FVU, lower CE loss recovered). The smallest
# coefficients reconstruct best but use a large share of the dictionary on every token, with many *dense*
# features that fire almost everywhere and mean little. A good choice sits at the knee of the curve: L0
# small (tens of features) while FVU and CE loss recovered are still acceptable; here that is about 4.
# The largest coefficient is sparser still, but loses most of the variance.
# END SOLUTION

# %% [markdown]
# ### 3c. The recipe: why not the seed's training loop?
#
# `RECIPE` (`saelab.TrainConfig.lab()`) keeps the seed's SAE and loss, and changes only how training
# starts and moves: two epochs over every training row in batches of 256 at lr 5e-3; the rows normalised
# (3b); every row of $W$ starting at norm 1 (the seed's Kaiming rows have norm about 1.7); each $b_{enc,i}$
# set so that feature $i$ fires on 5% of a sample of rows at the start; Adam's $\beta_2$ = 0.99 instead of
# 0.999; the lr falling linearly to 0 over the last 20% of steps; and half again the sparsity penalty on
# any feature that has been firing on more than 5% of the rows (`dense_l1`: the loss the SAE is measured
# by stays the seed's). Below, the seed's loop (the same rows, normalisation, batches, epochs and lr, but
# the seed's start, constant lr and plain penalty) against the recipe, compared at the same L0, where a
# reconstruction number means something. `sweep.at_l0` interpolates a sweep to a given L0.

# %%
seed_loop = saelab.TrainConfig(lr=RECIPE.lr, batch_size=RECIPE.batch_size, epochs=RECIPE.epochs, normalize=True)
seed_sweep = saelab.sparsity_sweep(acts, coefs=[1, 2, 4, 8, 16], eval_activations=test_acts, config=seed_loop,
                                   n_features=N_FEATURES)
target_l0 = sweep.metrics[COEF].l0  # the L0 of the SAE we study
compare = pd.DataFrame([{"recipe": name, **result.at_l0(target_l0)}
                        for name, result in (("seed's loop", seed_sweep), ("lab recipe", sweep))])
display(format_table(compare[["recipe", "l0", "coef", "fvu", "dense_fraction", "dead_fraction"]]))

fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
for name, result in (("seed's loop", seed_sweep), ("lab recipe", sweep)):
    t = result.table[result.table.coef >= 0.5].sort_values("l0")
    axes[0].plot(t.l0, t.fvu, "o-", label=name)
    axes[1].plot(t.l0, 100 * t.dense_fraction, "o-", label=name)
axes[0].set(xlabel="L0 (active features per token)", ylabel="FVU (lower = better)", title="Reconstruction")
axes[1].set(xlabel="L0 (active features per token)", ylabel="dense features (%, active on >10% of tokens)",
            title="Dense features")
for ax in axes:
    ax.axvline(target_l0, color="0.6", linestyle=":")
    ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# **Question.** At the same L0, which recipe reconstructs better, and which leaves more *dense* features
# (active on more than 10% of tokens)? Why would a feature that fires on a third of all tokens be hard to
# interpret?
#
# BEGIN SOLUTION
# **Answer.** The recipe reconstructs better (lower FVU) with far fewer dense features at the same L0.
# The seed's start (Kaiming rows, random biases, many features active on half the rows) lets training
# settle into a "dense basis": a few dozen features fire on most tokens and carry most of the L0 and of
# the reconstruction, while the rest fire rarely and add little. A feature that fires almost everywhere
# says little about any one token, so it cannot be read as a concept. Starting every feature sparse (5%
# of tokens) at a modest norm keeps training away from that solution, the extra penalty on features that
# drift above 5% pushes them back, and the lr decay settles the weights at the end.
# (benchmarks/RESULTS.md in the repository measures each change alone.)
# END SOLUTION

# %% [markdown]
# ### 3d. Held-out evaluation: why the seed's numbers flatter
#
# The seed trained on its 5 prompts repeated 10 times (a few dozen distinct tokens) for 50 epochs, and then
# measured the SAE **on those same rows**. Let us redo exactly that, and then measure the same SAE on the
# held-out rows.

# %%
seed_acts = saelab.collect_activations(model, list(saelab.NOTEBOOK_PROMPTS) * 10, [LAYER])[LAYER]
seed_run = saelab.sparsity_sweep(seed_acts, coefs=[1e-3], epochs=50)  # the seed: 50 epochs, measured on training rows
seed_sae = seed_run.saes[1e-3]
flatter = {
    "seed SAE, measured on its training prompts": saelab.evaluate(seed_sae, seed_acts),
    "seed SAE, measured on held-out texts": saelab.evaluate(seed_sae, test_acts),
    f"SAE trained on {len(acts):,} tokens (coef {COEFS[0]}), held-out": sweep.metrics[COEFS[0]],
}
for name, m in flatter.items():
    print(f"{name:52s} FVU {m.fvu:7.3f}   L0 {m.l0:6.1f}")
assert flatter["seed SAE, measured on its training prompts"].fvu < flatter["seed SAE, measured on held-out texts"].fvu

# %% [markdown]
# **Question.** Why does measuring on the training prompts flatter the seed's SAE? What does the
# held-out number tell you instead?
#
# BEGIN SOLUTION
# **Answer.** With a few dozen distinct rows and 50 epochs the SAE can memorise them: it has more features
# than there are distinct rows, so near-perfect reconstruction on those rows says nothing about new
# text. Measured on held-out text the same SAE reconstructs far worse, because it never saw the variety of
# real activations. The held-out number estimates what we care about, how well the dictionary explains
# activations the SAE has not seen; an SAE trained on many tokens does much better there. An FVU above 1, as
# here, means the seed's SAE does worse on new text than always answering the mean row: the directions it
# memorised fire on new rows and add vectors that point away from them. (The seed also
# kept the BOS rows, which made its loss mostly about one direction.)
# END SOLUTION

# %% [markdown]
# ## Part 4 (exercise 4): Features that fire together
#
# **What.** Write `top_pairs(features, k, min_density)`: given a feature matrix `[n_tokens, n_features]`,
# keep the features active (> 0) on more than `min_density` of the tokens, compute the Pearson
# correlation between their columns, and return the `k` most correlated **distinct** pairs as
# `(i, j, corr)` with feature ids `i < j`, highest first.
#
# **Why.** Features that co-activate may be parts of one concept split in two, or steps of one
# computation. The seed's version had to skip self-pairs and de-duplicate `(i, j)` and
# `(j, i)` by hand.
#
# **Difficulty:** ★★☆ · **Time:** about 20 minutes
#
# <details><summary>Hint 1</summary>
#
# `active = torch.nonzero((features > 0).float().mean(0) > min_density).flatten()`;
# `torch.corrcoef(features[:, active].T)` correlates the columns.
# </details>
# <details><summary>Hint 2</summary>
#
# `i, j = torch.triu_indices(m, m, offset=1)` lists each pair once and never `(i, i)`. Map positions back
# to feature ids with `active[i]`.
# </details>

# %%
def top_pairs(features, k=10, min_density=0.01):
    """The k most correlated distinct feature pairs [(i, j, corr)], i < j, highest first."""
    # BEGIN SOLUTION
    active = torch.nonzero((features > 0).float().mean(0) > min_density).flatten()
    corr = torch.corrcoef(features[:, active].T)
    i, j = torch.triu_indices(len(active), len(active), offset=1)
    values = corr[i, j]
    order = values.argsort(descending=True)[:k]
    return [(int(active[i[o]]), int(active[j[o]]), float(values[o])) for o in order]
    # END SOLUTION

# %% tags=["check"]
checks.check_top_pairs(top_pairs)

# %% [markdown]
# The reference, `saelab.feature_correlation`, computes the same streaming over the rows (no dense
# `[n_tokens, n_features]` matrix), and adds the cosine similarity of the two features' decoder
# directions. We use the SAE with coefficient `COEF`, on held-out rows.

# %%
sae = sweep.saes[COEF]
correlation = saelab.feature_correlation(sae, test_acts)
display(correlation)
display(correlation.heatmap())

# %% [markdown]
# Where does the top pair fire? Each line is one token (boxed) in its context; the shading is the
# feature's activation on every token.

# %%
i, j = int(correlation.table.feature_i[0]), int(correlation.table.feature_j[0])
display(saelab.top_activating_examples(sae, test_acts, i, k=5))
display(saelab.top_activating_examples(sae, test_acts, j, k=5))

# %% [markdown]
# **Question.** Do the two features fire on the same tokens? Is their decoder cosine high too? What
# could it mean when two features correlate strongly but point in different directions?
#
# BEGIN SOLUTION
# **Answer.** Look at the boxed tokens: strongly correlated pairs usually fire on the same or neighbouring
# tokens (the same word piece, the same syntactic slot). A high decoder cosine as well suggests one
# direction split over two features (*feature splitting*, a sign the dictionary is larger than needed or
# the L1 penalty low). A strong correlation with a low cosine suggests two different things that tend to
# occur together (e.g. "inside a code block" and "after an indent"), which is what makes co-activation
# interesting. Dense features (density near 1) correlate with much of everything; be wary of those pairs.
# END SOLUTION

# %% [markdown]
# ## Part 5 (exercise 5): Early vs late layers, compared fairly
#
# **What.** Write `fvu(x, x_hat)`, the *fraction of variance unexplained*:
#
# $$\mathrm{FVU} = \frac{\sum_{n,d} (x_{nd} - \hat{x}_{nd})^2}{\sum_{n,d} (x_{nd} - \bar{x}_d)^2},
# \qquad \bar{x}_d = \text{the mean of dimension } d \text{ over the rows.}$$
#
# **Why.** The seed compared layers by raw reconstruction loss. The residual stream's norm grows with
# depth, so a later layer's MSE is larger even when its SAE is just as good. FVU divides by the
# activations' own variance, which makes layers (and models) comparable.
#
# **Difficulty:** ★☆☆ · **Time:** about 10 minutes
#
# <details><summary>Hint</summary>
#
# Center `x` per dimension (`x - x.mean(dim=0)`) in the denominator; both sums run over rows and
# dimensions. Return a float.
# </details>

# %%
def fvu(x, x_hat):
    """Fraction of variance unexplained of x_hat [n, d] as a reconstruction of x [n, d]."""
    # BEGIN SOLUTION
    return ((x - x_hat).pow(2).sum() / (x - x.mean(dim=0)).pow(2).sum()).item()
    # END SOLUTION

# %% tags=["check"]
checks.check_fvu(fvu)

# %% [markdown]
# `saelab.compare_layers` collects the rows of both layers in one pass, trains one SAE per layer (the
# seed's early and late layers, 2 and 10 of GPT-2 small's 12, scaled to this model's depth:
# `saelab.notebook_layers(model)`, printed below) and reports, on held-out
# texts, the activation norm, the raw MSE, FVU and L0, then the seed's four test prompts: how many
# features are active at the last token, and the strongest. Both SAEs use the same coefficient, and with
# the recipe's normalisation (3b) it asks the same sparsity of both layers, whatever their norms.

# %%
EARLY, LATE = saelab.notebook_layers(model)[0], saelab.notebook_layers(model)[-1]
print(f"{MODEL_NAME}: early layer {EARLY} and late layer {LATE} of {model.cfg.n_layers} "
      f"(the seed's 2 and 10 of 12, at the same relative depth)")
layers = saelab.compare_layers(model, train_texts, max_tokens=MAX_TOKENS, eval_texts=test_texts,
                               eval_max_tokens=EVAL_TOKENS, sparsity_coef=COEF, config=RECIPE, n_features=N_FEATURES)
display(layers)
display(layers.plot())
early, late = layers.table.iloc[0], layers.table.iloc[-1]
assert late.activation_norm > early.activation_norm

# %% [markdown]
# **Question.** By raw MSE, which layer looks harder to reconstruct? And by FVU? Why can the two disagree?
#
# BEGIN SOLUTION
# **Answer.** The late layer's activations have a larger norm, so its raw MSE is larger almost
# automatically. FVU divides by each layer's variance: it says how much of the *structure* each SAE
# misses, which is the comparable quantity. Read the FVU column to decide which layer is harder for an SAE
# of this size; the MSE column mostly measures the norm. (The seed's claim that early layers are
# "syntactic" and late ones "semantic" needs feature inspection, Part 6, not loss numbers.)
# END SOLUTION

# %% [markdown]
# ## Part 6 (questions only): What do the features respond to?
#
# A *feature card* shows one feature: how often it fires, a histogram of its activations, the held-out
# tokens where it fires most (in context) and the tokens its decoder direction promotes or suppresses
# through the unembedding. We look at three typical features of the `COEF` SAE: alive, not dense, at
# different densities.

# %%
def typical_features(density, levels=(0.04, 0.01, 0.003), margin=1.02):
    """Alive, not dense features (0.2% < density < 10%): for each level, the one nearest to it in log-density
    among those whose density is `margin` times away from every other's, so a small change cannot swap two."""
    typical = torch.nonzero((density > 0.002) & (density < 0.1)).flatten()
    log_density = density[typical].double().log()
    gap = (log_density[:, None] - log_density[None, :]).abs().fill_diagonal_(float("inf")).amin(dim=1)
    apart = typical[gap >= torch.tensor(margin).log()]
    nearest = [(density[apart].double().log() - torch.tensor(level).log()).abs().argmin() for level in levels]
    return list(dict.fromkeys(int(apart[i]) for i in nearest)) if len(apart) else []


density = sweep.metrics[COEF].feature_density
picks = typical_features(density)
print("features:", picks, "densities:", [f"{density[f]:.2%}" for f in picks])
for feature in picks:
    display(saelab.feature_card(model, sae, test_acts, feature))

# %% [markdown]
# **Question.** For each card, write one sentence: what does the feature respond to? Is it a token, a
# context (code or prose), a position? Does its logit effect agree with where it fires?
#
# BEGIN SOLUTION
# **Answer.** (Depends on the model and seed; look at the cards above.) Typical answers: a feature that
# fires on one token or a family of tokens (a keyword, a punctuation mark, the start of a word) with a
# logit effect that promotes what usually follows; a context feature that fires on many different
# tokens inside code, or inside prose; a position-like feature that fires early in each text. When the
# top examples share the boxed token but the logit effect looks unrelated, the feature may be reading the
# input rather than writing the prediction. Claims need several examples, not one.
# END SOLUTION

# %% [markdown]
# ### 6b. Every feature in one browser
#
# `saelab.browse` shows the card of any feature you pick: type its id, search the tokens it fires on most
# (try `def` or `the`), or click a point of the scatter (one point per feature: how often it fires against
# how strongly). Under the card: what removing the feature costs the model and what the model writes with
# the feature switched on, with a slider for the strength (Parts 7 and 8 build both by hand). Where no live
# Jupyter runs the cell (a saved page, nbval), it shows the first feature's card, ablation and steering.

# %%
browser = saelab.browse(model, sae, test_acts, n_texts=2)
browser

# %% [markdown]
# ## Part 7 (exercise 7): Switching a feature on (steering)
#
# **What.** Write `my_steer(model, sae, feature, alpha)`, a context manager: while its `with` block runs,
# every forward pass of the model gets $\alpha\, d_i$ added to the activation at the SAE's hook
# (`sae.hook_name`) at every position except 0 (BOS), where $d_i$ = `sae.W_dec[feature]` is the feature's
# decoder direction in raw activation units. When the block ends, after an error too, the hook is gone.
#
# **Why.** A card says where a feature fires and which next tokens its direction pushes up: a story, built
# from correlations. Adding the direction and reading what the model then writes tests the story: if the
# feature means "a line break with indentation comes next", the steered model should write one.
#
# **Difficulty:** ★★☆ · **Time:** about 15 minutes
#
# <details><summary>Hint 1</summary>
#
# A TransformerLens hook is `def hook(activation, hook): return new_activation`, with `activation` of shape
# `[batch, pos, d_model]`; `with model.hooks(fwd_hooks=[(sae.hook_name, hook)]): yield` registers it for the
# block and removes it on the way out, whatever happens inside.
# </details>
# <details><summary>Hint 2</summary>
#
# `sae.W_dec[feature]` already includes `sae.input_scale` (the SAE reads and writes raw activations);
# `sae.encoder.weight[feature]` does not. Steering adds the same vector at every position: not the feature's
# activation, and not only where it fires.
# </details>

# %%
import contextlib


@contextlib.contextmanager
def my_steer(model, sae, feature, alpha):
    """While the with block runs: activation += alpha * sae.W_dec[feature] at sae.hook_name, positions 1:."""
    # BEGIN SOLUTION
    direction = sae.W_dec[feature].detach()  # [d_model], raw units (input_scale applied)

    def hook(activation, hook):
        added = torch.zeros_like(activation)
        added[:, 1:] = alpha * direction      # position 0 is BOS: left alone
        return activation + added

    with model.hooks(fwd_hooks=[(sae.hook_name, hook)]):  # removed on exit, after an error too
        yield
    # END SOLUTION

# %% tags=["check"]
checks.check_steering(my_steer, model)

# %% [markdown]
# `saelab.steer` is the reference (it can also take `alpha` in units of the feature's top activation on
# held-out rows, `alpha_scale="max"`, so that one number means the same on every model), and
# `saelab.steering_effect` runs it on a few prompts: for each alpha, the greedy continuation and a sampled one
# (seeded, the same for every alpha), and the change in the log-probability that the next token is one of
# the feature's top promoted tokens (its logit effects, as on the card).
#
# **Which feature?** A rule, so that the part works on any model and any training run:
# `saelab.pick_features` takes the features active on 0.2% to 5% of held-out tokens (alive, not dense, as in
# Part 6) and, among them, those whose decoder direction raises one token's logit most, counting only tokens
# that occur in the held-out text (rare byte pieces have large unembedding rows and would win otherwise): a
# feature that writes a clear prediction is the easiest to test by steering. Read its card first.

# %%
SEEN = test_acts.token_ids  # the tokens of the held-out text: logit effects count only tokens the model writes
STEERED = saelab.pick_features(model, sae, sweep.metrics[COEF].feature_density, n=2, vocab=SEEN)
print("features picked by the rule:", STEERED)
display(saelab.feature_card(model, sae, test_acts, STEERED[0], k=6))
steering = saelab.steering_effect(model, sae, STEERED[0], list(saelab.TEST_PROMPTS.values())[:3], alphas=[1, 2],
                                  alpha_scale="max", activations=test_acts, n_new=8, vocab=SEEN)
display(steering)
display(steering.plot())

# %% [markdown]
# **Question.** From the card: where does the feature fire, and which tokens does it promote? Steered, what does
# the model write, and by how much does the log-probability of those tokens rise? Does steering confirm the
# card's story? What would it mean if steering changed nothing?
#
# BEGIN SOLUTION
# **Answer.** (Depends on the run; on `tiny` the rule picks a feature that fires at the end of a line inside an
# indented block and promotes a line break followed by indentation.) Steered at once or twice its top
# activation, the greedy continuations fill with those tokens (indented lines), on prompts that have nothing
# to do with them, and the log-probability of the promoted tokens rises by several nats. That
# is causal evidence: the direction does what the card's logit effects say. Too strong an alpha makes the
# model repeat the token endlessly, which says the direction is used, not that the text makes sense. A
# feature whose steering changes nothing may be read by nothing downstream (its logit effect is small, or
# later layers ignore it), or may matter only together with other features.
# END SOLUTION

# %% [markdown]
# ## Part 8 (exercise 8): Switching a feature off (ablation)
#
# **What.** Write `ablate(sae, x, feature)`: rows `x` `[n, d_model]` with the feature's own contribution
# removed, $x - f_i(x)\, d_i$, with $f_i(x)$ = `sae.encode(x)[:, feature]` and $d_i$ = `sae.W_dec[feature]`.
# Keep the real `x`: do not replace it with the SAE's reconstruction.
#
# **Why.** If the feature matters to the model, removing it should cost next-token loss exactly on the tokens
# where it fires (and nothing elsewhere). Subtracting from the real activation keeps the SAE's error term
# $x - \hat{x}$, so the only change is the feature; the reconstruction would also remove everything the SAE
# misses.
#
# **Difficulty:** ★☆☆ · **Time:** about 10 minutes
#
# <details><summary>Hint</summary>
#
# One line: `x - sae.encode(x)[:, feature, None] * sae.W_dec[feature]`. Rows where the feature is 0 must not
# change (no decoder bias, no pre-activation).
# </details>

# %%
def ablate(sae, x, feature):
    """x [n, d_model] without the feature's contribution: x - f_i(x) * sae.W_dec[feature]."""
    # BEGIN SOLUTION
    return x - sae.encode(x)[:, feature, None] * sae.W_dec[feature]
    # END SOLUTION

# %% tags=["check"]
checks.check_ablation(ablate)

# %% [markdown]
# `saelab.feature_ablation` runs the model on held-out texts twice, clean and with the same feature's
# contribution removed at the SAE's hook (every position but BOS), and reports every token's change in
# next-token loss: the tokens where the feature helps most (shaded like the cards), and the mean change where
# the feature fires and where it does not.

# %%
ablation = saelab.feature_ablation(model, sae, test_texts[:CE_TEXTS], STEERED[0], k=8)
display(ablation)
display(ablation.plot())

# %% [markdown]
# **Question.** Where does removing the feature cost the model most: on the tokens its card shows, and for
# the next tokens its logit effects promote? Why is the change almost exactly 0 where the feature does not
# fire, yet not exactly 0 on every such token?
#
# BEGIN SOLUTION
# **Answer.** (Depends on the run.) Removing the feature costs most on some of the tokens where it fires,
# often where the next token is one of those it promotes (the `next` column): the model was using the
# feature to predict it. Averaged over every token where it fires, the change can be small or even negative
# (the summary then says the loss *falls*): the feature helps on some tokens and gets in the way on others,
# so read the table, not only the mean. Where
# the feature does not fire its contribution $f_i(x) d_i$ is 0, so nothing is removed at that position; a
# token can still change a little because attention reads earlier positions, where the feature may have been
# removed. A feature whose ablation costs nothing even where it fires is not used by the model's later
# layers, however clean its card looks.
# END SOLUTION

# %% [markdown]
# ## Wrap-up
#
# - A tied SAE is an encoder, a ReLU and the encoder's own weight transposed as the decoder; the L1
#   coefficient trades reconstruction for sparsity.
# - Leave BOS rows out, train on many tokens, and measure on held-out text.
# - Normalise the rows (and store the scale with the SAE) so a coefficient means the same on every model;
#   how training starts decides how many features end up dense.
# - Compare layers with FVU, not raw MSE.
# - Co-activation and feature cards are where interpretation starts; steering (switching a feature on) and
#   ablation (switching it off) test what a card suggests.
#
# `saelab run --out my_report` runs this whole lab headless and writes an HTML report with the tables,
# figures and trained SAEs (in SAELens format).

# %% [markdown]
# ## Optional: your SAE beside a reference SAE
#
# A *reference SAE* was trained with SAELens's own trainer on far more text than this lab uses. On
# `tiny` it ships with saelab (offline: `saelab.load_sae("tiny_layer2_standard")`, layer 2's
# resid_post); on `gpt2-small` (with internet) it is SAELens's pretrained `gpt2-small-res-jb` for the
# same layer: its hook `blocks.{LAYER + 1}.hook_resid_pre` is the same activation as our layer `LAYER`'s
# `hook_resid_post`. Every saelab tool takes either SAE. Below: a point for it on the sweep's plot, and
# the features of your SAE matched to its features by decoder cosine, as cards side by side.

# %%
from IPython.display import HTML

reference = None
if TINY:
    reference = saelab.load_sae("tiny_layer2_standard", device=device)
else:
    try:
        reference = saelab.load_sae(("gpt2-small-res-jb", f"blocks.{LAYER + 1}.hook_resid_pre"), device=device)
    except RuntimeError as error:  # offline: SAELens's pretrained SAEs come from Hugging Face
        print(f"No reference SAE for {MODEL_NAME} here, so this section is skipped: {error}")
if reference is not None:
    assert reference.layer in (LAYER, LAYER + 1) and reference.d_in == model.cfg.d_model
    ref_metrics = saelab.evaluate(reference, test_acts)
    ref_ce = saelab.ce_loss_recovered(model, reference, test_texts[:CE_TEXTS], layer=LAYER)
    display(ref_metrics)
    display(ref_ce)

    fig = sweep.plot()
    columns = ["fvu", "ce_loss_recovered"][:len(fig.axes)]
    for ax, column in zip(fig.axes, columns):
        value = ref_metrics.fvu if column == "fvu" else ref_ce.score
        ax.scatter([ref_metrics.l0], [value], marker="*", s=220, color="crimson", edgecolors="black", zorder=3,
                   label=f"reference SAE ({reference.d_sae:,} features)")
        ax.legend(fontsize=9)
    display(fig)

# %%
if reference is not None:
    matches = saelab.match_features(sae, reference)  # for each of your features, the closest reference feature
    display(matches)
    best = matches.table.set_index("feature")
    for feature in picks[:2]:
        match = int(best.loc[feature, "match"])
        print(f"your feature {feature} <-> reference feature {match}: decoder cosine {best.loc[feature, 'cosine']:.2f}")
        cards = [saelab.feature_card(model, s, test_acts, f, k=5) for s, f in ((sae, feature), (reference, match))]
        display(HTML("<div style='display:flex; gap:16px; align-items:flex-start'>"
                     + "".join(f"<div style='flex:1; min-width:0'>{card.html()}</div>" for card in cards) + "</div>"))

# %% [markdown]
# **Question.** Where does the reference SAE sit on the trade-off curve compared with your sweep, and
# why (think of how much text each saw, of how it was trained, and of its dictionary size)? For the matched
# pairs: does a high decoder cosine come with the same top examples and logit effects? What does a low best
# cosine say about a feature of yours?
#
# BEGIN SOLUTION
# **Answer.** (Depends on the model.) On `tiny` the reference SAE sits on the sweep's curve, not below it:
# at its L0 of about 20 its CE loss recovered is your sweep's (0.977, against about 0.975 interpolated at
# that L0) and its FVU is a little *higher* (0.224, against about 0.21). It made 20 passes over the same
# training texts (cut to 256 tokens: 157,000 rows; your SAEs make two passes over 219,000), with SAELens's
# default settings (batches of 1024, lr 1e-3), while the lab's recipe was tuned on exactly these rows: more
# passes over the same text buy little, and there is no more of tiny's text. On GPT-2 small expect it well below and left of your curve: the
# pretrained `gpt2-small-res-jb` has 24,576 features (32 x d_model, against your 4 x) and saw hundreds of
# millions of tokens of varied web text. Pairs with a cosine near 1 tend to fire on the same tokens and
# promote the same logits: the same direction found twice is evidence that the feature is a property of the
# model, not of one training run. A feature of yours with a low best cosine has no counterpart: it may be
# split or merged differently in the reference, or an artefact of short training.
# END SOLUTION

# %% [markdown]
# ### The tie, measured: one of your SAEs beside its untied twin
#
# Part 3c's recipe still leaves some features *dense* (active on more than 10% of tokens) at lower
# sparsity. SAELens's standard SAE, like the reference SAE above, is *untied*: its encoder $W_{enc}$ and
# decoder $W_{dec}$ are separate matrices. Does the tie make features dense? `saelab.untied_twin` trains
# SAELens's standard SAE from the same starting point as one of your SAEs ($W_{enc} = W^\top$,
# $W_{dec} = W$), on the same rows, in the same batches, for the same number of
# steps, with the same recipe and the same loss, so that only the tie differs. Untying needs two things
# more: each decoder row is kept at norm 1 (untied, $f_i \to c f_i$ with $d_i \to d_i / c$ changes
# nothing in the reconstruction, so without it the SAE could shrink every activation and dodge the
# penalty), and the twin's sparsity coefficient is steered during training until its L0 equals your
# SAE's, so the two compare at the same sparsity. We take your coefficient-2 SAE: at L0 about 34 (on
# `tiny`) the recipe still leaves about 5% of its features dense, while at `COEF` (L0 about 21) both SAEs
# have only a handful. One training, about as long as one of your SAEs' (seconds on `tiny`).

# %%
TIE_COEF = 2.0  # the sweep's SAE whose twin we train (L0 about 34 on tiny)
tie = saelab.untied_twin(sweep.saes[TIE_COEF], acts, test_acts, config=RECIPE)
display(tie)
display(tie.plot())
if TINY and LAB.size == "full":  # as measured on tiny (benchmarks/RESULTS.md)
    assert abs(tie.untied_metrics.l0 / tie.tied_metrics.l0 - 1) < 0.03, "the twin's L0 should match your SAE's"
    assert tie.untied_metrics.dense_fraction < 0.75 * tie.tied_metrics.dense_fraction

# %% [markdown]
# **Question.** At the same L0, how do the two SAEs compare in FVU and in dense features? The `enc_dec_cosine`
# column is the (median) cosine between a feature's encoder row and its decoder row: what does it say the
# twin did with its freedom? Why would an encoder that is free to differ from the decoder fire more
# selectively?
#
# BEGIN SOLUTION
# **Answer.** On `tiny`, at L0 about 34, both reconstruct about equally well (FVU 0.149 against 0.147) but
# the twin has less than half as many dense features (11 against 24 of 512), and its encoder rows have
# turned away from their decoder rows (median cosine about 0.79). In a tied SAE a feature reads with the direction it
# writes: its activation is $\mathrm{ReLU}(w_i \cdot x + b_i)$ with $w_i$ the very direction it adds to the
# reconstruction. With 512 features in 128 dimensions those directions overlap, so every token that owes a
# component along $w_i$ to *other* features also pushes feature $i$ up, and the bias can only raise or lower
# one threshold along that same direction: a feature with a broad direction fires on many tokens. An untied
# encoder can tilt its reading direction away from the directions of the features it is often confused
# with (as the rows of an inverse do), so it fires when its own direction is present and not when a
# neighbour's is, while the decoder still writes the direction that reconstructs best. The price: twice the
# weights, and a feature's encoder row no longer says what the feature writes, so read a feature from its
# decoder row (its logit effects) and its activations, not from its encoder row. At `COEF` (L0 about 21) the
# difference is small (2 dense features against 1 or 2): the gap opens where less sparsity is asked for and
# the tied SAE falls back on broad features. (On GPT-2 small the gap has not been measured: run the cell.)
# END SOLUTION
