"""Training throughput: saelab.train_sae vs plain PyTorch autograd vs a minimal SAELens loop.

All train on the same random activations [n_rows, 768] with d_sae 3072, read in the same shuffled
batches (saelab.training.trainer.batch_indices), with the same optimizer (`saelab.training.trainer.adam`: Adam, fused
where torch has it), and sync with the host every 10 steps (train_sae's default log_every).
- autograd: the SAME tied SAE and loss written as plain PyTorch (relu(x W^T + b_enc) W + b_dec,
  MSE + coef * mean f) and differentiated by autograd: like with like, so the ratio saelab /
  autograd is what the hand-written gradient (`saelab.sae.tied.tied_gradients`) buys.
- Function: the previous train_sae step (TiedSAE's autograd.Function, the same hand-written
  gradient under autograd's bookkeeping): what the one stacked core (no autograd) costs or saves.
- SAELens: the core of its SAETrainer._train_step (training_forward_pass -> backward -> step ->
  zero_grad) on its untied StandardTrainingSAE (one more weight matrix: not like with like).
The roofline is the time of the five matmuls one step needs and nothing else (encoder and decoder
forward, and the three backward matmuls: grad of the features, of the decoder use and of the
encoder use of W).

The variants run interleaved, `--repeats` times each, the order rotating every repeat; the table
gives medians and the ratios per repeat (side by side, so a busy CPU affects all alike).

    python benchmarks/bench_training.py                       # both batch sizes
    python benchmarks/bench_training.py --batch-sizes 64 --steps 300 --repeats 3
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("SAELAB_PROGRESS", "0")

import torch  # noqa: E402

from saelab.sae.tied import TiedSAE  # noqa: E402
from saelab.training.trainer import adam, batch_indices, train_sae  # noqa: E402

D_IN, D_SAE, COEF, LR, LOG_EVERY = 768, 3072, 1e-3, 1e-3, 10


def run_saelab(rows: torch.Tensor, batch_size: int, steps: int, seed: int) -> float:
    """tokens/s of train_sae's training loop (its own timer; the final evaluation is not counted)."""
    result = train_sae(TiedSAE(D_IN, D_SAE, seed=seed), rows, sparsity_coef=COEF, lr=LR, batch_size=batch_size,
                       steps=steps, seed=seed, device="cpu", progress=False, log_every=LOG_EVERY)
    return result.tokens_per_second


def autograd_loop(loss_of, params, rows: torch.Tensor, batch_size: int, steps: int, seed: int) -> float:
    """tokens/s of a plain loop: loss_of(x) -> backward -> the same optimizer's step (sync every LOG_EVERY)."""
    optimizer = adam(params, LR)
    n_tokens = 0
    start = time.perf_counter()
    for step, index in enumerate(batch_indices(len(rows), batch_size, seed, steps=steps), 1):
        loss = loss_of(rows.index_select(0, index))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n_tokens += len(index)
        if step % LOG_EVERY == 0 or step == steps:
            loss.item()
    return n_tokens / (time.perf_counter() - start)


def run_autograd(rows: torch.Tensor, batch_size: int, steps: int, seed: int) -> float:
    """tokens/s of the same tied SAE (TiedSAE's initial weights) written in plain PyTorch, autograd's gradient."""
    init = TiedSAE(D_IN, D_SAE, seed=seed)
    W, b_enc, b_dec = (p.detach().clone().requires_grad_() for p in
                       (init.encoder.weight, init.encoder.bias, init.decoder_bias))

    def loss_of(x):
        features = torch.relu(x @ W.T + b_enc)
        return torch.nn.functional.mse_loss(features @ W + b_dec, x) + COEF * features.mean()
    return autograd_loop(loss_of, [W, b_enc, b_dec], rows, batch_size, steps, seed)


def run_function(rows: torch.Tensor, batch_size: int, steps: int, seed: int) -> float:
    """tokens/s of the previous train_sae step: TiedSAE's loss as a torch.autograd.Function (sae.py's
    _TiedLoss, whose backward is tied_gradients with k = 1) under autograd, same optimizer."""
    sae = TiedSAE(D_IN, D_SAE, seed=seed)
    return autograd_loop(lambda x: sae._loss_terms(x, COEF)[0], sae.parameters(), rows, batch_size, steps, seed)


def make_saelens_sae():
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

    cfg = StandardTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, dtype="float32", device="cpu",
                                    apply_b_dec_to_input=False, l1_coefficient=COEF)
    return StandardTrainingSAE(cfg)


def run_saelens(rows: torch.Tensor, batch_size: int, steps: int, seed: int) -> float:
    """tokens/s of a minimal Adam loop around StandardTrainingSAE.training_forward_pass."""
    from sae_lens.saes.sae import TrainStepInput

    torch.manual_seed(seed)
    sae = make_saelens_sae()
    optimizer = adam(sae.parameters(), LR)
    n_tokens = 0
    start = time.perf_counter()
    for step, index in enumerate(batch_indices(len(rows), batch_size, seed, steps=steps), 1):
        x = rows.index_select(0, index)
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={"l1": COEF}, dead_neuron_mask=None,
                                                       n_training_steps=step, is_logging_step=False))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        n_tokens += len(index)
        if step % LOG_EVERY == 0 or step == steps:
            out.loss.item()
    return n_tokens / (time.perf_counter() - start)


def run_roofline(batch_size: int, steps: int, seed: int) -> float:
    """tokens/s if a step cost only its five matmuls (into preallocated outputs)."""
    g = torch.Generator().manual_seed(seed)
    x, g_out = torch.randn(batch_size, D_IN, generator=g), torch.randn(batch_size, D_IN, generator=g)
    W = torch.randn(D_SAE, D_IN, generator=g)
    f, g_f = torch.empty(batch_size, D_SAE), torch.empty(batch_size, D_SAE)
    recon, grad_w1, grad_w2 = torch.empty(batch_size, D_IN), torch.empty(D_SAE, D_IN), torch.empty(D_SAE, D_IN)
    start = time.perf_counter()
    for _ in range(steps):
        torch.mm(x, W.T, out=f)            # encoder forward   [B, d_in] @ [d_in, d_sae]
        torch.mm(f, W, out=recon)          # decoder forward   [B, d_sae] @ [d_sae, d_in]
        torch.mm(g_out, W.T, out=g_f)      # grad of features  [B, d_in] @ [d_in, d_sae]
        torch.mm(f.T, g_out, out=grad_w1)  # grad of decoder W [d_sae, B] @ [B, d_in]
        torch.mm(g_f.T, x, out=grad_w2)    # grad of encoder W [d_sae, B] @ [B, d_in]
    return batch_size * steps / (time.perf_counter() - start)


def bench(batch_size: int, steps: int, repeats: int, n_rows: int) -> dict:
    rows = torch.randn(n_rows, D_IN, generator=torch.Generator().manual_seed(0))
    warm = 1
    run_saelab(rows, batch_size, warm, 0)  # warm-up: allocator, thread pool, lazy imports
    run_autograd(rows, batch_size, warm, 0)
    run_saelens(rows, batch_size, warm, 0)
    results = {"saelab": [], "function": [], "autograd": [], "saelens": [], "roofline": []}
    for rep in range(repeats):
        order = [("saelab", lambda: run_saelab(rows, batch_size, steps, rep)),
                 ("function", lambda: run_function(rows, batch_size, steps, rep)),
                 ("autograd", lambda: run_autograd(rows, batch_size, steps, rep)),
                 ("saelens", lambda: run_saelens(rows, batch_size, steps, rep)),
                 ("roofline", lambda: run_roofline(batch_size, steps, rep))]
        order = order[rep % len(order):] + order[:rep % len(order)]  # rotate who goes first
        for name, fn in order:
            results[name].append(fn())
            print(f"  batch {batch_size} repeat {rep + 1}/{repeats}: {name:8s} {results[name][-1]:12,.0f} tokens/s",
                  flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4096, 64])
    parser.add_argument("--steps", type=int, nargs="+", default=None,
                        help="steps per run, one per batch size (default: 30 at 4096 or more, else 300)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or [30 if b >= 4096 else 300 for b in args.batch_sizes]
    if len(steps) != len(args.batch_sizes):
        parser.error("--steps needs one value per batch size")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; d_in {D_IN}, d_sae {D_SAE}")
    table = []
    for batch_size, n_steps in zip(args.batch_sizes, steps):
        r = bench(batch_size, n_steps, args.repeats, n_rows=max(2 * batch_size, 8192))
        ratios = {other: [a / b for a, b in zip(r["saelab"], r[other])]
                  for other in ("function", "autograd", "saelens", "roofline")}
        table.append((batch_size, n_steps, {k: statistics.median(v) for k, v in r.items()}, ratios))
    print(f"\n{args.repeats} interleaved repeats; medians (ratio range over repeats in brackets)\n")
    print("| batch | steps/run | saelab tok/s | Function tok/s | autograd tok/s | SAELens tok/s | roofline tok/s "
          "| saelab / Function | saelab / autograd | saelab / SAELens | saelab / roofline |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for b, s, med, ratios in table:
        cells = " | ".join(f"{statistics.median(v):.2f}x [{min(v):.2f}-{max(v):.2f}]" for v in ratios.values())
        print(f"| {b} | {s} | {med['saelab']:,.0f} | {med['function']:,.0f} | {med['autograd']:,.0f} | {med['saelens']:,.0f} "
              f"| {med['roofline']:,.0f} | {cells} |")


if __name__ == "__main__":
    main()
