"""SAELens SAEs in saelab's tools: `SAELensSAE`, a thin adapter, and `load_sae`, the one loader.

`SAELensSAE(sae)` gives any SAELens `SAE` object (standard, TopK, JumpReLU, gated, AbsTopK,
matching pursuit, ...) saelab's SAE interface (see `saelab.sae.interface`): `encode`, `decode`,
`W_dec` `[d_sae, d_in]`, `b_dec` `[d_in]`, `d_in`, `d_sae`, `hook_name`, `layer`, `metadata`.
It holds no math of its own: `encode` and `decode` are the wrapped SAE's own methods, so every
architecture SAELens implements computes exactly what SAELens computes.

`load_sae(source)` accepts a folder (a saelab tied folder loads as `TiedSAE`; any other SAELens
folder loads through sae_lens), an SAE object, or a `(release, sae_id)` pair of SAELens's
pretrained registry (downloads, so online only). sae_lens is optional for `import saelab`: it is
imported here only when a SAELens SAE is loaded, and saelab reads no non-tied architecture
itself (that would be a second copy of SAELens's math), so those need `pip install sae-lens`.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

from saelab.sae.folder_format import CFG_FILENAME, WEIGHTS_FILENAME, read_folder
from saelab.sae.tied import TiedSAE
from saelab.utils import ASSETS_DIR, describe
from saelab.validate import check_sae_input

#: The reference SAEs shipped with saelab (SAELens folders), by name; see their REFERENCE_CARD.md.
REFERENCE_DIR = ASSETS_DIR / "reference"
REFERENCE_SAES = {"tiny_layer2_standard": REFERENCE_DIR / "tiny_layer2_standard"}

_INSTALL = "pip install sae-lens"
_LAYER_RE = re.compile(r"^blocks\.(\d+)\.")
# Architectures whose decode is not a reconstruction of encode's input, by why.
_NOT_AUTOENCODERS = {
    "transcoder": "a transcoder maps the input to another hook's output",
    "skip_transcoder": "a transcoder maps the input to another hook's output",
    "jumprelu_transcoder": "a transcoder maps the input to another hook's output",
    "jumprelu_skip_transcoder": "a transcoder maps the input to another hook's output",
    "temporal": "a temporal SAE's decode leaves out the part predicted from earlier tokens",
}


def is_saelens_sae(obj) -> bool:
    """True when obj is a SAELens `SAE` object (never imports sae_lens: without it, none exists)."""
    module = sys.modules.get("sae_lens")
    return module is not None and isinstance(obj, module.SAE)


class SAELensSAE:
    """A SAELens SAE seen through saelab's SAE interface; the SAELens object is `.sae`.

    encode / decode are SAELens's own (`sae.encode`, `sae.decode`); inputs go in on `W_dec`'s
    device and dtype. Refused, with the reason: transcoders and temporal SAEs (decode does not
    reconstruct encode's input), hook_z reshaping (saelab's rows are flat `[..., d_in]`), and
    `normalize_activations="expected_average_only_in"` with its scale not folded into the weights.
    name: the argument's name in those errors (`as_sae(name, sae)` passes its own).
    """

    def __init__(self, sae, name: str = "sae"):
        if not is_saelens_sae(sae):
            raise ValueError(f"{name}: expected a SAELens SAE object (sae_lens.SAE), got {describe(sae)}")
        architecture = sae.cfg.architecture()
        if architecture in _NOT_AUTOENCODERS:
            raise ValueError(f"{name}: saelab's tools need an SAE that reconstructs its input, got a SAELens "
                             f"{architecture!r} SAE ({_NOT_AUTOENCODERS[architecture]})")
        if sae.cfg.reshape_activations != "none":
            raise ValueError(f"{name}: expected a SAELens SAE reading flat [..., d_in] rows, got reshape_activations="
                             f"{sae.cfg.reshape_activations!r} (hook_z); call sae.turn_off_forward_pass_hook_z_"
                             f"reshaping() and set sae.cfg.reshape_activations = 'none' first")
        if sae.cfg.normalize_activations == "expected_average_only_in":
            raise ValueError(f"{name}: expected a SAELens SAE that reads raw activations, got normalize_activations="
                             "'expected_average_only_in' with its scale not folded in; call "
                             "sae.fold_activation_norm_scaling_factor(factor) first")
        self.sae = sae

    # -- the SAE interface ---------------------------------------------------------------------------
    @property
    def W_dec(self) -> torch.Tensor:
        """The decoder weight [d_sae, d_in]: each row a feature's direction."""
        return self.sae.W_dec

    @property
    def b_dec(self) -> torch.Tensor:
        """The decoder bias [d_in]."""
        return self.sae.b_dec

    @property
    def d_in(self) -> int:
        """The width of the activations it reads."""
        return int(self.sae.cfg.d_in)

    @property
    def d_sae(self) -> int:
        """The number of features."""
        return int(self.sae.cfg.d_sae)

    @property
    def architecture(self) -> str:
        """SAELens's architecture name ("standard", "topk", "jumprelu", ...)."""
        return self.sae.cfg.architecture()

    @property
    def metadata(self) -> dict:
        """SAELens's metadata (model_name, hook_name, context_size, ...) as a plain dict."""
        return dict(self.sae.cfg.metadata.to_dict())

    @property
    def hook_name(self) -> str | None:
        """The full hook name it reads (e.g. "blocks.2.hook_resid_post"); None if unknown."""
        return self.sae.cfg.metadata.hook_name

    @property
    def layer(self) -> int | None:
        """The model layer of `hook_name` ("blocks.<layer>. ..."), else metadata's hook_layer; None if unknown."""
        match = _LAYER_RE.match(self.hook_name or "")
        if match:
            return int(match.group(1))
        layer = self.sae.cfg.metadata.hook_layer
        return layer if isinstance(layer, int) and not isinstance(layer, bool) else None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Activations [..., d_in] -> features [..., d_sae] (dense), by SAELens's `encode`."""
        check_sae_input("x", x, self.d_in, "d_in", self.W_dec)
        return self.encode_unchecked(x)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """Features [..., d_sae] -> reconstruction [..., d_in], by SAELens's `decode`."""
        check_sae_input("features", features, self.d_sae, "d_sae", self.W_dec)
        return self.decode_unchecked(features)

    def encode_unchecked(self, x: torch.Tensor) -> torch.Tensor:
        """`encode` without its checks (for tools that checked their rows once)."""
        features = self.sae.encode(x)
        return features.to_dense() if features.is_sparse else features

    def decode_unchecked(self, features: torch.Tensor) -> torch.Tensor:
        """`decode` without its checks."""
        return self.sae.decode(features)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[..., d_in] -> (reconstruction [..., d_in], features [..., d_sae]), like `TiedSAE.forward`."""
        features = self.encode(x)
        return self.decode(features), features

    def to(self, *args, **kwargs) -> "SAELensSAE":
        """Move the wrapped SAE (SAELens's `to`); returns self."""
        self.sae.to(*args, **kwargs)
        return self

    def __repr__(self) -> str:
        return (f"SAELensSAE({type(self.sae).__name__}: architecture={self.architecture!r}, d_in={self.d_in}, "
                f"d_sae={self.d_sae}, hook_name={self.hook_name!r})")


def _import_sae_lens(what: str):
    try:
        import sae_lens
    except ImportError:
        raise ImportError(f"{what} needs sae_lens, which is not installed: {_INSTALL}") from None
    return sae_lens


def load_sae(source, device=None):
    """An SAE with saelab's SAE interface, from `source`:

    - a folder (str or Path) in SAELens's format: a folder saved by saelab's `TiedSAE.save`
      loads as `TiedSAE`; any other architecture SAELens saves loads with sae_lens
      (`SAE.load_from_disk`) and comes back as `SAELensSAE`;
    - a name in `REFERENCE_SAES` ("tiny_layer2_standard": the shipped reference SAE for tiny);
    - a `TiedSAE` or `SAELensSAE` (returned as it is) or a SAELens `SAE` object (wrapped);
    - a pair `(release, sae_id)` of SAELens's pretrained registry, e.g.
      `("gpt2-small-res-jb", "blocks.8.hook_resid_pre")` (downloads from Hugging Face: online only).
    device: None picks cuda, then mps, then cpu (for objects: None leaves them where they are).
    """
    from saelab.models import resolve_device

    if isinstance(source, (TiedSAE, SAELensSAE)):
        return source if device is None else source.to(resolve_device(device))
    if is_saelens_sae(source):
        return SAELensSAE(source if device is None else source.to(resolve_device(device)))
    if isinstance(source, tuple):
        return _load_pretrained(source, resolve_device(device))
    if isinstance(source, str) and source in REFERENCE_SAES:
        source = REFERENCE_SAES[source]
    if isinstance(source, (str, Path)):
        return _load_folder(Path(source), resolve_device(device))
    raise ValueError(f"source: expected a SAELens folder, a name in {sorted(REFERENCE_SAES)}, an SAE object or a "
                     f"(release, sae_id) pair, got {describe(source)}")


def _load_folder(folder: Path, device: torch.device):
    cfg, tensors = read_folder(folder)
    metadata = cfg.get("metadata", {})
    if metadata.get("saelab_class") == "TiedSAE":
        return TiedSAE.load(folder, device=device)
    architecture = cfg.get("architecture", "standard")
    sae_lens = _import_sae_lens(f"{folder}: a SAELens {architecture!r} SAE")
    from sae_lens.registry import SAE_CLASS_REGISTRY

    if architecture not in SAE_CLASS_REGISTRY:
        raise RuntimeError(f"{folder / CFG_FILENAME}: architecture {architecture!r} is not one sae_lens "
                           f"{sae_lens.__version__} knows (it knows {sorted(SAE_CLASS_REGISTRY)}); upgrade sae_lens "
                           f"or register the class")
    _check_decoder(folder, cfg, tensors)
    try:
        sae = sae_lens.SAE.load_from_disk(str(folder), device=str(device))
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as e:
        raise RuntimeError(f"{folder}: sae_lens {sae_lens.__version__} could not load this {architecture!r} SAE "
                           f"from {CFG_FILENAME} and {WEIGHTS_FILENAME} ({type(e).__name__}: "
                           f"{str(e).strip()[:300]})") from None
    return SAELensSAE(sae)


def _check_decoder(folder: Path, cfg: dict, tensors: dict) -> None:
    """What every SAELens architecture holds, checked against cfg.json before sae_lens reads the folder:
    W_dec [d_sae, d_in] and b_dec [d_in], and W_enc [d_in, d_sae] / b_enc [d_sae] where present."""
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    shapes = {"W_dec": (d_sae, d_in), "b_dec": (d_in,), "W_enc": (d_in, d_sae), "b_enc": (d_sae,)}
    missing = [k for k in ("W_dec", "b_dec") if k not in tensors]
    if missing:
        raise RuntimeError(f"{folder / WEIGHTS_FILENAME}: expected tensors W_dec and b_dec, missing {missing} "
                           f"(found {sorted(tensors)})")
    for key, shape in shapes.items():
        if key in tensors and tuple(tensors[key].shape) != shape:
            raise RuntimeError(f"{folder / WEIGHTS_FILENAME}: expected {key} of shape {list(shape)} ({CFG_FILENAME}"
                               f" d_in={d_in}, d_sae={d_sae}), got {list(tensors[key].shape)}")


def _load_pretrained(source: tuple, device: torch.device) -> SAELensSAE:
    if len(source) != 2 or not all(isinstance(s, str) for s in source):
        raise ValueError(f"source: expected a (release, sae_id) pair of strings, got {describe(source)}")
    release, sae_id = source
    sae_lens = _import_sae_lens(f"the pretrained SAE {release!r} / {sae_id!r}")
    try:
        sae = sae_lens.SAE.from_pretrained(release, sae_id, device=str(device))
    except ValueError:
        raise  # an unknown release or sae_id: SAELens's message lists the valid ones
    except (OSError, ConnectionError, RuntimeError) as e:  # huggingface_hub's offline errors are OSErrors
        raise RuntimeError(f"source: could not download the pretrained SAE {release!r} / {sae_id!r} from Hugging "
                           f"Face ({type(e).__name__}: {e}); offline, use the shipped reference SAE: "
                           f"saelab.load_sae('tiny_layer2_standard')") from None
    return SAELensSAE(sae)
