"""Train saelab's shipped reference SAE for tiny with SAELens's own trainer (sae_lens.SAETrainer).

Reproduce (about a minute on 2 CPU cores, needs sae_lens):
    python tools/train_reference_sae.py                       # -> saelab/assets/reference/tiny_layer2_standard/
    python tools/train_reference_sae.py --l1 5 --epochs 2 --out /tmp/try   # a quick try elsewhere
    python tools/train_reference_sae.py --remeasure           # the shipped SAE's held-out numbers only

What it does: collects layer 2 `resid_post` of tiny on ALL shipped training texts (saelab's
`collect_activations`, BOS rows dropped, each text its own sequence: the shipped SAE was trained on
texts cut to n_ctx = 256, before collection split long texts into 256-token windows), then runs
SAELens's `SAETrainer` on those rows: SAELens's standard architecture (`StandardTrainingSAE`:
untied W_enc / W_dec, b_dec subtracted from the input, L1 penalty weighted by decoder norms,
decoder init norm 0.1), activations normalised by SAELens's `expected_average_only_in` scaler
(folded into the weights at the end), Adam with SAELens's LR warm-up and decay, L1 warm-up, grad
clipping, all SAELens's. The only saelab piece is the data provider: shuffled mini-batches of the
pre-collected rows, epoch after epoch (seeded). The result is saved with SAELens's own
`save_inference_model` (SAELens folder format, fp32) and evaluated on the held-out texts with
saelab's `evaluate` and `ce_loss_recovered` through saelab's SAELens adapter; the numbers go to
cfg.json's metadata (`saelab_reference`) and to REFERENCE_CARD.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[1] / "saelab" / "assets" / "reference" / "tiny_layer2_standard"
LAYER, HOOK = 2, "resid_post"


def batch_provider(rows: torch.Tensor, batch_size: int, seed: int):
    """Endless shuffled mini-batches [batch_size, d_in] of rows; a fresh permutation each epoch."""
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(rows), generator=g)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield rows[order[start:start + batch_size]]


def sae_lens_metadata(model) -> dict:
    """SAELens's dataset / model metadata for SAEs trained on saelab's rows of `model`."""
    return dict(model_name=model.cfg.model_name, model_class_name="HookedTransformer",
                hook_name=f"blocks.{LAYER}.hook_{HOOK}", hook_head_index=None, context_size=model.cfg.n_ctx,
                prepend_bos=True, seqpos_slice=[None], exclude_special_tokens=True,
                disable_concat_sequences=True, sequence_separator_token=None,
                dataset_path="saelab/assets/texts", model_from_pretrained_kwargs={})


def train(rows: torch.Tensor, args, metadata: dict):
    """SAELens's SAETrainer on `rows` [n, d_in]; returns (trained StandardTrainingSAE, steps, seconds)."""
    from sae_lens import SAETrainer, StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(args.seed)
    steps = args.epochs * (len(rows) // args.batch_size)
    sae_cfg = StandardTrainingSAEConfig(d_in=rows.shape[1], d_sae=args.d_sae, l1_coefficient=args.l1,
                                        l1_warm_up_steps=steps // 20,
                                        normalize_activations="expected_average_only_in",
                                        metadata=SAEMetadata(**metadata))
    trainer_cfg = SAETrainerConfig(total_training_samples=steps * args.batch_size,
                                   train_batch_size_samples=args.batch_size, lr=args.lr, lr_end=args.lr / 10,
                                   lr_warm_up_steps=steps // 20, lr_decay_steps=steps // 5, device="cpu",
                                   dead_feature_window=steps // 4, feature_sampling_window=steps // 4,
                                   n_batches_for_norm_estimate=min(100, len(rows) // args.batch_size),
                                   logger=LoggingConfig(log_to_wandb=False))
    sae = StandardTrainingSAE(sae_cfg)
    start = time.perf_counter()
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=batch_provider(rows, args.batch_size, args.seed))
    sae = trainer.fit()
    return sae, trainer.n_training_steps, time.perf_counter() - start


def save(sae, out: Path) -> None:
    """SAELens's own save into a fresh folder beside `out`, then renamed onto it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    sae.save_inference_model(str(tmp))
    for file in tmp.iterdir():
        file.chmod(0o644)
    tmp.chmod(0o755)  # mkdtemp makes it private; package data must be readable
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def write_atomic(file: Path, text: str) -> None:
    """Write text beside `file`, then rename it onto `file`."""
    tmp = file.with_name(f".{file.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, file)


def card(info: dict) -> str:
    e, ce = info["eval"], info["ce_loss"]
    return f"""# Reference SAE for tiny: layer 2 resid_post, SAELens standard architecture

`saelab.load_sae("tiny_layer2_standard")` loads it (needs sae_lens). The offline stand-in for a
pretrained SAE such as SAELens's `gpt2-small-res-jb`: an SAE trained with SAELens's own trainer
on far more of tiny's text than the lab uses. Rebuilt by `python tools/train_reference_sae.py`.

- Architecture: SAELens `standard` (untied W_enc [128, {info['d_sae']}] / W_dec [{info['d_sae']}, 128],
  b_enc, b_dec; ReLU; `apply_b_dec_to_input` true), fp32, {info['size_kb']:.0f} kB of weights.
- Hook: `blocks.2.hook_resid_post` of tiny (BOS rows excluded; trained with each text cut to 256
  tokens, measured below on every token, long texts in 256-token windows as saelab now collects them).
- Data: all {info['n_texts']} shipped training texts = {info['n_rows']:,} rows, {info['epochs']} epochs:
  {info['tokens']:,} training tokens in {info['steps']:,} steps of {info['batch_size']} (the lab trains one
  epoch over its rows: about 219,000 tokens).
- Trainer: `sae_lens.SAETrainer` {info['sae_lens_version']} (Adam lr {info['lr']} with warm-up and decay,
  L1 coefficient {info['l1']} with warm-up, `expected_average_only_in` normalisation folded in), seed
  {info['seed']}, {info['seconds']:.0f} s on CPU ({info['threads']} thread(s)).
- Held-out texts ({e['n_tokens']:,} rows of the {info['n_test_texts']} test texts), by saelab:
  L0 = {e['l0']:.2f}, FVU = {e['fvu']:.4f} (explained variance {e['explained_variance']:.4f}),
  MSE = {e['mse']:.4f} (saelab: mean over rows and dimensions; SAELens's mse is this x 128),
  dead features {e['dead_fraction']:.3f}, dense (>10% of tokens) {e['dense_fraction']:.3f}.
- CE loss recovered on the test texts (saelab's `ce_loss_recovered`, BOS kept in both runs):
  score {ce['score']:.4f} (clean {ce['clean']:.4f}, spliced {ce['spliced']:.4f}, zero-ablated
  {ce['zero_ablation']:.4f} nats per token, {ce['n_tokens']:,} predictions).
"""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--d-sae", type=int, default=512)
    parser.add_argument("--l1", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--remeasure", action="store_true",
                        help="keep the weights in --out; measure the held-out numbers again (card and cfg.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import sae_lens

    import saelab

    model = saelab.load_model("tiny", device="cpu")
    train_texts, test_texts = saelab.load_texts("train"), saelab.load_texts("test")
    cfg_file = args.out / "cfg.json"
    if args.remeasure:   # the shipped weights as they are; only the held-out numbers are measured again
        info = json.loads(cfg_file.read_text(encoding="utf-8"))["metadata"]["saelab_reference"]
    else:
        rows = saelab.collect_activations(model, train_texts, [LAYER], hook=HOOK, progress=False)[LAYER].rows
        sae, steps, seconds = train(rows, args, sae_lens_metadata(model))
        save(sae, args.out)
        info = dict(d_sae=args.d_sae, n_texts=len(train_texts), n_rows=len(rows), epochs=args.epochs,
                    tokens=steps * args.batch_size, steps=steps, batch_size=args.batch_size, lr=args.lr,
                    l1=args.l1, seed=args.seed, seconds=seconds, threads=args.threads,
                    sae_lens_version=sae_lens.__version__,
                    size_kb=(args.out / "sae_weights.safetensors").stat().st_size / 1024)
    ref = saelab.load_sae(args.out, device="cpu")
    test_acts = saelab.collect_activations(model, test_texts, [LAYER], hook=HOOK, progress=False)[LAYER]
    info.update(n_test_texts=len(test_texts), eval=saelab.evaluate(ref, test_acts).as_dict(),
                ce_loss=saelab.ce_loss_recovered(model, ref, test_texts, layer=LAYER, hook=HOOK).as_dict())
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    cfg["metadata"]["saelab_reference"] = info
    write_atomic(cfg_file, json.dumps(cfg, indent=2))
    write_atomic(args.out.parent / "REFERENCE_CARD.md", card(info))
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
