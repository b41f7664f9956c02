"""Shared helpers: the crate's PyTorch fixtures (tests/fixtures, made by
tests/fixtures/generate.py with PyTorch itself)."""

from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"


def fixture_cases() -> list[Path]:
    """Every case file: weights under ``rnn.``, inputs, ``expected.*``."""
    cases = sorted(p for p in FIXTURES.glob("*.safetensors") if p.name != "icu_model.safetensors")
    assert cases, f"no fixtures in {FIXTURES}"
    return cases


def load_case(path: Path) -> dict[str, np.ndarray]:
    """The case's tensors that numpy can hold (bfloat16 weights it cannot:
    those cases are left out of tests that hand weights over in memory)."""
    with safe_open(str(path), framework="np") as f:
        out = {}
        for key in f.keys():
            try:
                out[key] = f.get_tensor(key)
            except TypeError:
                pass
        return out


@pytest.fixture(params=fixture_cases(), ids=lambda p: p.stem)
def case_path(request: pytest.FixtureRequest) -> Path:
    return request.param
