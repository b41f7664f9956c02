"""The numpy API with device="cuda": CudaRnn under the same calls, against
PyTorch's fixtures and the CPU path. Runs where a GPU works (a lent GPU, or
the CUDA driver stand-in: scripts/emulated-gpu python -m pytest ...);
skipped elsewhere, failed instead with RNN_REQUIRE_GPU=1."""

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, load_case
from test_numpy_api import TOL, check_outputs, run_case

import rnn_kernels


def _gpu_or_why() -> str | None:
    try:
        rnn_kernels.Rnn.load(FIXTURES / "lstm_basic.safetensors", "rnn", device="cuda")
    except RuntimeError as e:
        return str(e)
    return None


_WHY = _gpu_or_why()
if _WHY is not None and os.environ.get("RNN_REQUIRE_GPU") == "1":
    raise RuntimeError(f"RNN_REQUIRE_GPU=1, and no GPU works: {_WHY}")
pytestmark = pytest.mark.skipif(_WHY is not None, reason=f"no GPU: {_WHY}")


def test_file_matches_pytorch_on_the_gpu(case_path: Path) -> None:
    model = rnn_kernels.Rnn.load(case_path, prefix="rnn", device="cuda")
    assert model.device == "cuda"
    assert "CUDA" in model.info
    case = load_case(case_path)
    check_outputs(run_case(model, case), case)


def test_streams_on_the_gpu_match_the_cpu() -> None:
    path = FIXTURES / "lstm_basic.safetensors"
    gpu = rnn_kernels.Rnn.load(path, "rnn", device="cuda")
    cpu = rnn_kernels.Rnn.load(path, "rnn", device="cpu")
    rng = np.random.default_rng(5)
    inputs = rng.standard_normal((6, 3, gpu.config["input_size"]), dtype=np.float32)
    on_gpu, on_cpu = gpu.streams(3), cpu.streams(3)
    for t, x in enumerate(inputs):
        if t == 3:
            on_gpu.reset([1])
            on_cpu.reset([1])
        np.testing.assert_allclose(on_gpu.step(x), on_cpu.step(x), rtol=0, atol=TOL)
    np.testing.assert_allclose(on_gpu.h, on_cpu.h, rtol=0, atol=TOL)
    np.testing.assert_allclose(on_gpu.c, on_cpu.c, rtol=0, atol=TOL)


def test_bad_input_on_the_gpu_is_a_clear_error() -> None:
    model = rnn_kernels.Rnn.load(FIXTURES / "lstm_basic.safetensors", "rnn", device="cuda")
    with pytest.raises(ValueError, match="input"):
        model.forward(np.zeros((2, 3, model.config["input_size"] + 1), dtype=np.float32))
    with pytest.raises(ValueError, match="threads"):
        rnn_kernels.Rnn.load(FIXTURES / "lstm_basic.safetensors", "rnn", device="cuda", threads=2)


def test_training_on_the_gpu_matches_the_cpu() -> None:
    path = FIXTURES / "lstm_basic.safetensors"
    rng = np.random.default_rng(6)
    results = []
    for device in ("cuda", "cpu"):
        model = rnn_kernels.Rnn.load(path, "rnn", device=device)
        x = rng.standard_normal((5, 3, model.config["input_size"]), dtype=np.float32)
        output, h_n, c_n, reserve = model.forward_train(x, lengths=[5, 1, 3])
        grad = np.linspace(-1, 1, output.size, dtype=np.float32).reshape(output.shape)
        results.append((output, h_n, c_n, *model.backward(reserve, grad, h_n, c_n)))
        rng = np.random.default_rng(6)  # the same input on both
    gpu, cpu = results
    for a, b in zip(gpu[:6], cpu[:6], strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
    assert gpu[6].keys() == cpu[6].keys()
    for name in cpu[6]:
        np.testing.assert_allclose(gpu[6][name], cpu[6][name], rtol=0, atol=1e-4, err_msg=name)
