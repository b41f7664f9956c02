"""The seed's two models (python/examples/seed_models.py, as written) with
their LSTM converted: training losses step by step against PyTorch's own,
and the example that trains and scores them. Skipped where torch is not
installed."""

import copy
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import rnn_kernels.torch as rt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import convert_train_score as example  # noqa: E402
from seed_models import HybridClinicalModel, ICUTimeSeriesModel  # noqa: E402


@pytest.mark.parametrize("model_class", [ICUTimeSeriesModel, HybridClinicalModel])
def test_training_losses_follow_pytorch_step_by_step(model_class: type) -> None:
    cohort = example.synthetic_cohort(96, seed=3)
    torch.manual_seed(0)
    theirs = model_class()
    ours = rt.convert(copy.deepcopy(theirs))
    losses = []
    for model in (theirs, ours):
        model.eval()  # dropout off: PyTorch's masks and the crate's differ by design
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        run = []
        for rows in torch.arange(96).split(32):
            part = {k: v[rows] for k, v in cohort.items()}
            p = example.probabilities(model, part).clamp(1e-6, 1 - 1e-6)
            loss = nn.functional.binary_cross_entropy(p, part["died"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.append(loss.item())
        losses.append(run)
    assert losses[0][0] != losses[0][-1]
    for a, b in zip(*losses, strict=True):
        assert abs(a - b) <= 1e-5, losses
    for name, value in theirs.state_dict().items():
        assert (ours.state_dict()[name] - value).abs().max() <= 1e-5, name


def test_example_trains_and_scores_as_pytorch() -> None:
    result = example.run(ICUTimeSeriesModel, patients=240, epochs=1)
    assert result["max_diff"] <= 1e-5
    assert 0.0 <= result["auroc"] <= 1.0
    assert result["held_out"] == 80


def test_auroc() -> None:
    import numpy as np

    assert example.auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert example.auroc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    assert example.auroc(np.array([0.5, 0.5, 0.5, 0.5]), np.array([0, 1, 0, 1])) == 0.5
