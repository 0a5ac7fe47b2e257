"""TiedSAE: the lab's tied-weight ReLU sparse autoencoder, saved and loaded in the SAELens format.

The math is the seed notebook's `SparseAutoencoder`, unchanged:

    features       = relu(x @ W.T + b_enc)          W = encoder.weight [n_features, d_model]
    reconstruction = features @ W + b_dec           (tied: the decoder is the encoder weight)
    loss           = mean((reconstruction - x)^2) + sparsity_coef * mean(|features|)

applied to rows divided by `input_scale` (a number s, 1.0 unless training normalised the rows; see
`TrainConfig.normalize`): encode(x) = relu((x / s) @ W.T + b_enc), decode(f) = s * (f @ W + b_dec).
So the SAE reads and writes raw activations, while its weights and coefficient live on rows of a
fixed mean squared norm, whatever the model's activation scale.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from saelab.sae.folder_format import load_tied, save_tied
from saelab.utils import active
from saelab.validate import check_float, check_int, check_sae_input



def _uniform_(tensor: torch.Tensor, bound: float) -> None:
    """`tensor.uniform_(-bound, bound)` from the same draws, the same on every CPU: torch's vectorised
    kernel (AVX2, AVX512) computes x * (to - from) + from with one rounding, its scalar kernel
    (ATEN_CPU_CAPABILITY=default, some ARM builds) with two, so the seed's init differed in the last bit
    of half the weights, which training amplifies. Exact in float64, then rounded once: the vectorised
    kernel's values, everywhere."""
    low, high = (torch.tensor(v, dtype=tensor.dtype).double() for v in (-bound, bound))
    x = torch.rand(tensor.shape, dtype=tensor.dtype, device=tensor.device)    # the draws uniform_ makes
    tensor.copy_((x.double() * (high - low) + low).to(tensor.dtype))


class TiedSAE(nn.Module):
    """A tied-weight ReLU SAE: `encoder = nn.Linear(d_model, n_features)`, decoder = encoder weight.

    d_model: width of the activations it reads; n_features: dictionary size (the notebook uses 4 * d_model).
    seed: None draws the initial weights from torch's global RNG exactly as the original notebook does;
          an int draws them from a private RNG seeded with it (the global RNG state is untouched), and
          `TiedSAE(d, n, seed=s)` equals `torch.manual_seed(s); SparseAutoencoder(d, n)` from the notebook.
    metadata: a JSON-able dict (hook_name, layer, model_name, training settings) saved in cfg.json.
    input_scale: s, the rows' scale (a positive float, 1.0 = none): the seed's math runs on x / s and the
          reconstruction is multiplied back by s (set by training with `TrainConfig(normalize=True)`).
    """

    def __init__(self, d_model: int, n_features: int, seed: int | None = None):
        """TiedSAE(d_model, n_features, seed=None): weights W [n_features, d_model] (Kaiming-uniform, as
        in the original notebook), b_enc [n_features] and b_dec [d_model] (zeros); see the class docstring."""
        super().__init__()
        self.d_model = check_int("d_model", d_model, minimum=1)
        self.n_features = check_int("n_features", n_features, minimum=1)
        seed = check_int("seed", seed, minimum=0, allow_none=True)
        self.metadata: dict = {}
        self.input_scale = 1.0
        if seed is None:
            self._build()
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self._build()

    def _build(self) -> None:
        # The seed's construction, draw for draw, so the same RNG state gives the same weights:
        # nn.Linear's own init (W, then b_enc), b_dec zeros, then kaiming_uniform_(W, nonlinearity="relu").
        self.encoder = nn.utils.skip_init(nn.Linear, self.d_model, self.n_features, bias=True)
        self.decoder_bias = nn.Parameter(torch.zeros(self.d_model))
        with torch.no_grad():
            torch.rand(self.encoder.weight.shape)        # nn.Linear's draws for W, which the seed redraws below
            _uniform_(self.encoder.bias, 1 / math.sqrt(self.d_model))
            _uniform_(self.encoder.weight, math.sqrt(3.0) * math.sqrt(2.0) / math.sqrt(self.d_model))  # Kaiming, ReLU

    @property
    def input_scale(self) -> float:
        """s: the seed's math runs on x / s; decode multiplies by s (1.0: the raw rows, as in the seed)."""
        return self._input_scale

    @input_scale.setter
    def input_scale(self, value) -> None:
        self._input_scale = check_float("input_scale", value, minimum=0.0, strict=True)

    @property
    def W_dec(self) -> torch.Tensor:
        """The decoder weight [n_features, d_model] on raw activations: the encoder weight itself (tied),
        times input_scale when that is not 1."""
        weight = self.encoder.weight
        return weight if self._input_scale == 1.0 else weight * self._input_scale

    # -- the SAE interface (saelab.sae.interface): read-only views -----------------------------------
    @property
    def d_in(self) -> int:
        """The width of the activations it reads (= d_model)."""
        return self.d_model

    @property
    def d_sae(self) -> int:
        """The number of features (= n_features)."""
        return self.n_features

    @property
    def b_dec(self) -> torch.Tensor:
        """The decoder bias [d_in] on raw activations (the parameter `decoder_bias`, times input_scale)."""
        bias = self.decoder_bias
        return bias if self._input_scale == 1.0 else bias * self._input_scale

    @property
    def hook_name(self) -> str | None:
        """The full hook name it was trained on (e.g. "blocks.1.hook_resid_post"), from metadata; None if unknown."""
        return self.metadata.get("hook_name")

    @property
    def layer(self) -> int | None:
        """The model layer it was trained on, from metadata; None if unknown."""
        return self.metadata.get("layer")

    def encode_unchecked(self, x: torch.Tensor) -> torch.Tensor:
        """`encode` without its checks, for tools that validated their input once: x [..., d_in] on the
        SAE's device and dtype -> features [..., d_sae] (the checks would cost ~1.8x the math)."""
        return self._encode(x)

    def decode_unchecked(self, features: torch.Tensor) -> torch.Tensor:
        """`decode` without its checks: features [..., d_sae] on the SAE's device and dtype -> [..., d_in]."""
        return self._decode(features)

    def extra_repr(self) -> str:
        scale = "" if self._input_scale == 1.0 else f", input_scale={self._input_scale:.4g}"
        return f"d_model={self.d_model}, n_features={self.n_features}, tied=True{scale}"

    # -- validation ------------------------------------------------------------------------------
    def _check_input(self, name: str, x, width: int, what: str) -> None:
        check_sae_input(name, x, width, what, self.encoder.weight)

    # -- unchecked math (the trainer and metrics call these after validating once) -----------------
    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self._input_scale != 1.0:
            x = x / self._input_scale
        return F.relu(self.encoder(x))

    def _decode(self, features: torch.Tensor) -> torch.Tensor:
        reconstruction = F.linear(features, self.encoder.weight.T, self.decoder_bias)
        return reconstruction if self._input_scale == 1.0 else reconstruction.mul_(self._input_scale)

    def _loss_terms(self, x: torch.Tensor, sparsity_coef: float):
        """(loss, recon, sparsity, features [rows, n_features]) as tensors on x / input_scale, no
        validation, no host sync. Only `loss` carries a gradient."""
        x = x.reshape(-1, self.d_model)
        if self._input_scale != 1.0:
            x = x / self._input_scale
        return _TiedLoss.apply(x, self.encoder.weight, self.encoder.bias, self.decoder_bias, sparsity_coef)

    # -- public API ------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d_model] -> features [..., n_features] = relu(x @ W.T + b_enc)."""
        self._check_input("x", x, self.d_model, "d_model")
        return self._encode(x)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """features [..., n_features] -> reconstruction [..., d_model] = features @ W + b_dec."""
        self._check_input("features", features, self.n_features, "n_features")
        return self._decode(features)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[..., d_model] -> (reconstruction [..., d_model], features [..., n_features])."""
        self._check_input("x", x, self.d_model, "d_model")
        features = self._encode(x)
        return self._decode(features), features

    def compute_loss(self, x: torch.Tensor, sparsity_coef: float = 1e-3) -> tuple[torch.Tensor, dict]:
        """The seed's loss on x [..., d_model]: MSE + sparsity_coef * mean |features|, computed on
        x / input_scale (the rows the SAE trains on; with input_scale 1, on x itself).

        Returns (loss, {"recon": MSE, "sparsity": mean |features|, "n_active": mean number of active
        features per row}) with the dict's values as Python floats, as in the seed.
        """
        self._check_input("x", x, self.d_model, "d_model")
        coef = check_float("sparsity_coef", sparsity_coef, minimum=0.0)
        loss, recon, sparsity, features = self._loss_terms(x, coef)
        n_active = active(features).sum(dim=-1).float().mean()
        recon_v, sparsity_v, n_active_v = torch.stack([recon, sparsity, n_active]).detach().tolist()
        return loss, {"recon": recon_v, "sparsity": sparsity_v, "n_active": n_active_v}

    # -- SAELens format ----------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write the SAELens folder `path/` (cfg.json + sae_weights.safetensors); returns the folder.

        Architecture "standard" with W_enc [d_in, d_sae] = W.T / s, W_dec = s W, b_enc and
        b_dec = s * decoder_bias (s = input_scale, folded in; tied when s = 1), and
        apply_b_dec_to_input false (the seed does not subtract b_dec before encoding), so
        `sae_lens.SAE.load_from_disk(path)` computes the same features and reconstructions on raw rows.
        All or nothing: the folder is written beside `path` and swapped in, so a reader (or a kill)
        sees the previous save or this one, never a mix; an existing `path` is replaced whole (it
        may hold only an SAE folder's files). Refuses NaN / inf in the weights or the metadata.
        cfg.json's metadata also carries SAELens's dataset keys (`folder_format.SAELENS_DATASET_DEFAULTS`).
        """
        return save_tied(self, path)

    @classmethod
    def load(cls, path, device=None) -> "TiedSAE":
        """Load a folder written by `save` (or any SAELens "standard" SAE whose W_enc is W_dec.T and
        apply_b_dec_to_input is false). device: None picks cuda, then mps, then cpu. Refuses
        tensors whose dtype is not cfg.json's `dtype`."""
        return load_tied(path, device, cls)


def tied_gradients(x, W, features, grad_out, sparsity_grad):
    """The tied SAE's gradients for k SAEs at once: THE one place saelab differentiates the seed's loss.

    x [k, rows, d_model] (an expanded view when the SAEs share a batch), W [k, n_features, d_model],
    features [k, rows, n_features] = relu(x W^T + b_enc), grad_out [k, rows, d_model] = d loss /
    d reconstruction, sparsity_grad: d loss / d feature of the sparsity term (a number or a tensor
    broadcast to [k, 1, 1]). The tied weight's decoder and encoder gradients are summed inside one
    batched GEMM instead of being materialised and added. Returns (grad_W [k, n_features, d_model],
    grad_b_enc [k, n_features], grad_b_dec [k, d_model], grad_features [k, rows, n_features]).
    """
    grad_features = torch.bmm(grad_out, W.transpose(1, 2)).add_(sparsity_grad)
    grad_features = torch.ops.aten.threshold_backward(grad_features, features, 0)   # through the ReLU
    grad_W = torch.bmm(features.transpose(1, 2), grad_out).baddbmm_(grad_features.transpose(1, 2), x)
    return grad_W, grad_features.sum(dim=1), grad_out.sum(dim=1), grad_features


class _TiedLoss(torch.autograd.Function):
    """The seed's loss on x [rows, d_model] with the hand-written backward of `tied_gradients`.

    Forward: the seed's operations (so the same numbers). Backward: `tied_gradients` with k = 1, and
    the input's gradient when asked. Outputs: loss, recon (MSE), sparsity (mean |features|), features.
    """

    @staticmethod
    def forward(ctx, x, weight, b_enc, b_dec, coef):
        features = F.relu(F.linear(x, weight, b_enc))
        reconstruction = F.linear(features, weight.T, b_dec)
        recon = F.mse_loss(reconstruction, x)
        sparsity = features.mean()  # features >= 0 after the ReLU, so this is mean |features|
        ctx.save_for_backward(x, weight, features, reconstruction)
        ctx.coef = coef
        ctx.mark_non_differentiable(recon, sparsity, features)
        return recon + coef * sparsity, recon, sparsity, features

    @staticmethod
    def backward(ctx, grad_loss, *_):
        x, weight, features, reconstruction = ctx.saved_tensors
        rows, d_model = x.shape
        grad_out = (reconstruction - x).mul_(grad_loss * (2.0 / (rows * d_model)))      # [rows, d_model]
        grad_w, grad_b_enc, grad_b_dec, grad_features = tied_gradients(
            x.unsqueeze(0), weight.unsqueeze(0), features.unsqueeze(0), grad_out.unsqueeze(0),
            grad_loss * (ctx.coef / features.numel()))
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(grad_features[0], weight).sub_(grad_out)
        return grad_x, grad_w[0], grad_b_enc[0], grad_b_dec[0], None

