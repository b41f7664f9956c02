"""The seed's models on rnn-kernels: convert, train, score, and check
against PyTorch's own LSTM.

    python python/examples/convert_train_score.py [--patients 1536] [--epochs 4]

For each of the seed's two models (seed_models.py, unchanged): convert its
LSTM with ``rnn_kernels.torch.convert``, train it a few epochs (Adam,
dropout on) on a synthetic cohort whose deaths follow a hidden risk that
shows in the vitals' trends and in the note embeddings, then score held-out
patients. The unconverted class is trained the same way for its time, then
given our trained weights: its scores (PyTorch's) and ours must agree to
float32 rounding.
"""

import argparse
import copy
import time

import numpy as np
import torch
from seed_models import HybridClinicalModel, ICUTimeSeriesModel
from torch import nn

import rnn_kernels.torch as rt

FEATURES, HOURS, EMBED = 6, 48, 768


def synthetic_cohort(patients: int, seed: int) -> dict[str, torch.Tensor]:
    """Stays of 12 to 48 hours. A hidden risk per patient drifts heart rate
    and respiration up and blood pressure and SpO2 down, hour by hour, and
    tilts the note embedding; death is drawn from it (about one in five)."""
    gen = torch.Generator().manual_seed(seed)
    risk = torch.randn(patients, generator=gen)
    hours = torch.arange(HOURS, dtype=torch.float32) / HOURS
    drift = torch.tensor([1.0, -1.0, 0.8, -0.6, 0.3, 0.0])  # per vital, in sd per stay
    vitals = torch.randn(patients, HOURS, FEATURES, generator=gen) * 0.8
    vitals += risk[:, None, None] * hours[None, :, None] * drift[None, None, :] * 1.5
    lengths = torch.randint(12, HOURS + 1, (patients,), generator=gen)
    vitals *= (torch.arange(HOURS)[None, :] < lengths[:, None]).unsqueeze(-1)  # zero past the stay
    direction = torch.randn(EMBED, generator=gen) / EMBED**0.5
    notes = torch.randn(patients, EMBED, generator=gen) * 0.05 + 0.05 * risk[:, None] * direction
    died = (torch.rand(patients, generator=gen) < torch.sigmoid(2.0 * risk - 2.0)).float()
    return {"vitals": vitals, "lengths": lengths, "notes": notes, "died": died}


def probabilities(model: nn.Module, cohort: dict[str, torch.Tensor]) -> torch.Tensor:
    """P(death) per patient, whichever of the two models."""
    if isinstance(model, HybridClinicalModel):
        logit = model(cohort["vitals"], cohort["notes"], cohort["lengths"]).squeeze(-1)
        return torch.sigmoid(logit)
    return model(cohort["vitals"], cohort["lengths"])


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """The probability that a death scores above a survivor (ties count half)."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average the ranks of ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    positives = labels == 1
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def train(model: nn.Module, cohort: dict[str, torch.Tensor], epochs: int, batch: int) -> float:
    """Adam on the binary cross-entropy, dropout on; returns the last epoch's mean loss."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    patients = len(cohort["died"])
    gen = torch.Generator().manual_seed(1)
    for _ in range(epochs):
        losses = []
        for rows in torch.randperm(patients, generator=gen).split(batch):
            part = {k: v[rows] for k, v in cohort.items()}
            p = probabilities(model, part).clamp(1e-6, 1 - 1e-6)
            loss = nn.functional.binary_cross_entropy(p, part["died"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return float(np.mean(losses))


def run(model_class: type, patients: int, epochs: int) -> dict[str, float]:
    cohort = synthetic_cohort(patients, seed=0)
    split = patients * 2 // 3
    train_set = {k: v[:split] for k, v in cohort.items()}
    held_out = {k: v[split:] for k, v in cohort.items()}

    torch.manual_seed(0)
    model = rt.convert(model_class())  # the LSTM inside now runs on rnn-kernels
    start = time.perf_counter()
    loss = train(model, train_set, epochs, batch=64)
    seconds = time.perf_counter() - start

    torch.manual_seed(0)
    pytorch = model_class()  # the same class on PyTorch's own LSTM, trained the same way
    start = time.perf_counter()
    train(pytorch, train_set, epochs, batch=64)
    pytorch_seconds = time.perf_counter() - start
    pytorch.load_state_dict(copy.deepcopy(model.state_dict()))  # then given our weights
    with torch.no_grad():
        ours = probabilities(model.eval(), held_out)
        theirs = probabilities(pytorch.eval(), held_out)
    died = held_out["died"].numpy()
    return {
        "train_seconds": seconds,
        "pytorch_train_seconds": pytorch_seconds,
        "last_loss": loss,
        "auroc": auroc(ours.numpy(), died),
        "max_diff": (ours - theirs).abs().max().item(),
        "held_out": len(died),
        "deaths": int(died.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1536)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    for model_class in (ICUTimeSeriesModel, HybridClinicalModel):
        r = run(model_class, args.patients, args.epochs)
        print(
            f"{model_class.__name__}: trained {args.epochs} epochs in {r['train_seconds']:.1f} s "
            f"(PyTorch's own LSTM: {r['pytorch_train_seconds']:.1f} s; last loss "
            f"{r['last_loss']:.3f}); {r['held_out']} held-out patients, "
            f"{r['deaths']} deaths, AUROC {r['auroc']:.3f}; "
            f"scores vs PyTorch's own LSTM: max |Δ| {r['max_diff']:.1e}"
        )
        assert r["max_diff"] <= 1e-5, "the crate's scores must be PyTorch's"


if __name__ == "__main__":
    main()
