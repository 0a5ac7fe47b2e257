"""Instant checks for the lab's exercises: each compares a student's code with saelab's reference
implementation on small fixed inputs. Part N of the lab holds exercise N:

    check_sae(MySAE)                       exercise 1: encode, decode, compute_loss of a tied SAE
    check_activations(collect_rows, model) exercise 2: resid_post rows of one layer, BOS rows dropped
    check_training_loop(train_one)         exercise 3: one sparsity coefficient's training loop
    check_top_pairs(top_pairs)             exercise 4: the most correlated feature pairs
    check_fvu(fvu)                         exercise 5: the fraction of variance unexplained
    check_steering(my_steer, model)        exercise 7: a context manager adding a feature's direction
    check_ablation(ablate)                 exercise 8: one feature's contribution removed from x

A check prints one line "✅ <check> (exercise N) passed: ..." when the code matches, or raises
`CheckFailed` (an AssertionError) whose one-paragraph message says what differs and hints at the
usual mistake. Importing this module makes a CheckFailed show as "❌ <check> (exercise N) failed:
<message>" without a stack trace, in any Jupyter kernel or IPython shell and in plain Python
(see `saelab.checks.core`); the cell or script still fails.
"""
from saelab.checks.ablation import check_ablation
from saelab.checks.core import EXERCISES, FAIL, PASS, CheckFailed, failure_text, install_handlers
from saelab.checks.fvu import check_fvu
from saelab.checks.pairs import check_top_pairs
from saelab.checks.rows import CHECK_TEXTS, check_activations
from saelab.checks.sae_class import check_sae
from saelab.checks.steering import check_steering
from saelab.checks.training_loop import check_training_loop

__all__ = ["CheckFailed", "PASS", "FAIL", "EXERCISES", "CHECK_TEXTS", "failure_text", "check_sae",
           "check_activations", "check_training_loop", "check_top_pairs", "check_fvu", "check_steering", "check_ablation"]

install_handlers()
