"""Steering and ablation on tiny (issue 20): the measured effects and what the lab's Parts 7 and 8 cost.

    python benchmarks/bench_features.py [--threads 2]

Uses the shipped reference SAE (`tiny_layer2_standard`) and the lab's held-out sizes on tiny
(10,000 held-out rows, 16 held-out texts), runs the calls Parts 7 and 8 make (the two checks, the rule,
a card, steering_effect, feature_ablation) and prints each one's seconds and the numbers RESULTS.md records.
"""
import argparse
import time

import torch

import saelab
from saelab import checks
from saelab.features.ablation import feature_ablation
from saelab.features.steering import pick_features, steering_effect
from saelab.training.lab_settings import lab_settings

parser = argparse.ArgumentParser()
parser.add_argument("--threads", type=int, default=2)
args = parser.parse_args()
torch.set_num_threads(args.threads)

model = saelab.load_model("tiny", device="cpu")
sae = saelab.load_sae("tiny_layer2_standard")
lab = lab_settings("tiny")
test_texts = saelab.load_texts("test")
held = saelab.collect_activations(model, test_texts, [sae.layer], max_tokens=lab.eval_tokens, progress=False)[sae.layer]
density = saelab.evaluate(sae, held).feature_density

timings = {}


def timed(name, fn, *a, **kw):
    start = time.perf_counter()
    out = fn(*a, **kw)
    timings[name] = time.perf_counter() - start
    return out


def reference_steer(model, sae, feature, alpha):
    return saelab.steer(model, sae, feature, alpha)


timed("check_steering", checks.check_steering, reference_steer, model)
timed("check_ablation", checks.check_ablation,
      lambda s, x, f: x - s.encode(x)[:, f, None] * s.W_dec[f])
picked = timed("pick_features", pick_features, model, sae, density, n=2, vocab=held.token_ids)
timed("feature_card", saelab.feature_card, model, sae, held, picked[0], k=6)
steering = timed("steering_effect", steering_effect, model, sae, picked[0], list(saelab.TEST_PROMPTS.values())[:3],
                 alphas=[1, 2], alpha_scale="max", activations=held, n_new=8, vocab=held.token_ids)
ablation = timed("feature_ablation", feature_ablation, model, sae, test_texts[:lab.ce_texts], picked[0],
                 progress=False)
print(f"features picked: {picked}; top promoted tokens of {picked[0]}: {steering.top_tokens[:3]}")
print(f"steering: mean delta log P(top tokens) {steering.mean_delta(1.0):.3f} nats at alpha 1 (x top activation), "
      f"{steering.mean_delta(2.0):.3f} at alpha 2")
print(f"ablation: {int(ablation.firing.sum())} firing tokens of {len(ablation.table)}; mean delta loss "
      f"{ablation.mean_delta_firing:.4f} where it fires, {ablation.mean_delta_silent:.6f} where not")
for name, seconds in timings.items():
    print(f"{name:18s} {seconds:6.2f} s")
print(f"{'total':18s} {sum(timings.values()):6.2f} s")
