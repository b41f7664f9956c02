"""The numpy API against PyTorch's own outputs (the crate's fixtures), and
the fast path against itself: threads, streams, state_dicts in memory."""

import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, load_case

import rnn_kernels

TOL = 2e-5  # f32 against PyTorch's f64 fixture outputs, as the Rust tests


def run_case(model: rnn_kernels.Rnn, case: dict[str, np.ndarray]) -> tuple:
    return model.forward(
        case["input"], lengths=case.get("lengths"), h0=case.get("h0"), c0=case.get("c0")
    )


def check_outputs(got: tuple, case: dict[str, np.ndarray], tol: float = TOL) -> None:
    output, h_n, c_n = got
    assert output.dtype == np.float32
    np.testing.assert_allclose(output, case["expected.output"], rtol=0, atol=tol)
    np.testing.assert_allclose(h_n, case["expected.h_n"], rtol=0, atol=tol)
    if "expected.c_n" in case:
        np.testing.assert_allclose(c_n, case["expected.c_n"], rtol=0, atol=tol)
    else:
        assert c_n is None


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_file_matches_pytorch(case_path: Path, threads: int) -> None:
    model = rnn_kernels.Rnn.load(case_path, prefix="rnn", device="cpu", threads=threads)
    assert model.device == "cpu" and model.threads == threads
    check_outputs(run_case(model, load_case(case_path)), load_case(case_path))


def test_state_dict_in_memory_matches_pytorch(case_path: Path) -> None:
    case = load_case(case_path)
    meta = rnn_kernels.Rnn.load(case_path, prefix="rnn", device="cpu").config
    weights = {k: v for k, v in case.items() if k.startswith("rnn.")}
    if "bf16" in case_path.stem:
        pytest.skip("numpy has no bfloat16")
    model = rnn_kernels.Rnn.from_state_dict(
        weights,
        prefix="rnn",
        batch_first=meta["batch_first"],
        cell=meta["mode"],
        gru_original=not meta["gru_linear_before_reset"] if meta["mode"] == "gru" else None,
        device="cpu",
    )
    assert model.config == meta
    check_outputs(run_case(model, case), case)


def test_float64_and_list_inputs_are_converted() -> None:
    path = FIXTURES / "lstm_basic.safetensors"
    case = load_case(path)
    model = rnn_kernels.Rnn.load(path, prefix="rnn", device="cpu")
    check_outputs(model.forward(case["input"].astype(np.float64)), case)
    check_outputs(model.forward(case["input"].tolist()), case)
    # A non-contiguous view gives the same numbers as its copy.
    doubled = np.repeat(case["input"], 2, axis=2)[:, :, ::2]
    check_outputs(model.forward(doubled), case)


def test_seed_model_by_prefix() -> None:
    """The ICU model's whole state_dict: the LSTM under lstm.*, batch-first."""
    model = rnn_kernels.Rnn.load(FIXTURES / "icu_model.safetensors", "lstm", batch_first=True)
    config = model.config
    assert config["mode"] == "lstm" and config["batch_first"] is True
    x = np.random.default_rng(0).standard_normal((3, 5, config["input_size"]), dtype=np.float32)
    output, h_n, c_n = model.forward(x)
    assert output.shape == (3, 5, config["hidden_size"])
    assert h_n.shape == c_n.shape == (config["num_layers"], 3, config["hidden_size"])
    assert "batch_first" not in model.assumed


def lstm_file(tmp_path: Path, batch_first: bool = False) -> Path:
    """A small LSTM saved by the crate's rules: PyTorch names, no metadata."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    hidden, inputs = 8, 5
    tensors = {}
    for layer in range(2):
        width = inputs if layer == 0 else hidden
        tensors[f"weight_ih_l{layer}"] = rng.uniform(-0.3, 0.3, (4 * hidden, width))
        tensors[f"weight_hh_l{layer}"] = rng.uniform(-0.3, 0.3, (4 * hidden, hidden))
        tensors[f"bias_ih_l{layer}"] = rng.uniform(-0.3, 0.3, 4 * hidden)
        tensors[f"bias_hh_l{layer}"] = rng.uniform(-0.3, 0.3, 4 * hidden)
    path = tmp_path / "lstm.safetensors"
    save_file({k: v.astype(np.float32) for k, v in tensors.items()}, str(path))
    return path


def test_streams_equal_whole_sequences(tmp_path: Path) -> None:
    """Stepping B streams one step at a time equals forward over the whole
    sequences; reset rows restart from zero."""
    model = rnn_kernels.Rnn.load(lstm_file(tmp_path), device="cpu", threads=2)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 4, 5), dtype=np.float32)
    output, h_n, c_n = model.forward(x)
    ward = model.streams(4)
    assert len(ward) == ward.batch == 4
    for t in range(6):
        np.testing.assert_allclose(ward.step(x[t]), output[t], rtol=0, atol=1e-6)
    np.testing.assert_allclose(ward.h, h_n, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ward.c, c_n, rtol=0, atol=1e-6)
    ward.reset([1, 3])
    assert not ward.h[:, [1, 3]].any() and not ward.c[:, [1, 3]].any()
    assert ward.h[:, 0].any()
    fresh = model.forward(x[:1])[0][0]
    np.testing.assert_allclose(ward.step(x[0])[[1, 3]], fresh[[1, 3]], rtol=0, atol=1e-6)


def test_threads_share_a_model(tmp_path: Path) -> None:
    """Several Python threads calling one model get what one thread gets,
    bit for bit (the GIL is released while the crate computes)."""
    model = rnn_kernels.Rnn.load(lstm_file(tmp_path), device="cpu", threads=2)
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((20, 3 + i, 5), dtype=np.float32) for i in range(4)]
    alone = [model.forward(x)[0] for x in inputs]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(5):
            results[i] = model.forward(inputs[i])[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, want in enumerate(alone):
        np.testing.assert_array_equal(results[i], want)


def test_bad_inputs_raise_with_the_crates_message(tmp_path: Path) -> None:
    path = lstm_file(tmp_path)
    model = rnn_kernels.Rnn.load(path, device="cpu")
    x = np.zeros((4, 3, 5), np.float32)
    with pytest.raises(ValueError, match=r"input: expected shape \[T, B, 5\]"):
        model.forward(np.zeros((4, 3, 6), np.float32))
    with pytest.raises(ValueError, match="h0"):
        model.forward(x, h0=np.zeros((1, 3, 8), np.float32))
    with pytest.raises(ValueError, match="lengths"):
        model.forward(x, lengths=[4, 5, 1])
    with pytest.raises(ValueError, match="lengths"):
        model.forward(x, lengths=[4, -1, 1])
    with pytest.raises(TypeError, match="lengths"):
        model.forward(x, lengths="abc")
    with pytest.raises(TypeError, match="input: expected an array of floats"):
        model.forward(x.astype(np.int32))
    with pytest.raises(ValueError, match="x: expected shape"):
        model.streams(3).step(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="rows"):
        model.streams(3).reset([3])
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        rnn_kernels.Rnn.load(tmp_path / "missing.safetensors")
    with pytest.raises(IsADirectoryError):
        rnn_kernels.Rnn.load(tmp_path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        rnn_kernels.Rnn.load(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match="unknown device"):
        rnn_kernels.Rnn.load(path, device="tpu")
    with pytest.raises(ValueError, match="unknown cell"):
        rnn_kernels.Rnn.load(path, cell="transformer")
    with pytest.raises(ValueError, match="threads must be at least 1"):
        rnn_kernels.Rnn.load(path, threads=0)
    with pytest.raises(ValueError, match="cell = gru: gru has 3 gates"):
        rnn_kernels.Rnn.load(path, cell="gru")
    with pytest.raises(ValueError, match="gru_original applies to a GRU"):
        rnn_kernels.Rnn.load(path, gru_original=True)
    with pytest.raises(ValueError, match="no recurrent network under prefix"):
        rnn_kernels.Rnn.load(path, prefix="encoder")
    with pytest.raises(ValueError, match="weight_hh_l1"):
        rnn_kernels.Rnn.from_state_dict(
            {"weight_ih_l0": np.zeros((32, 5)), "weight_hh_l0": np.zeros((32, 8))}
            | {"weight_ih_l1": np.zeros((32, 8))}
        )
    with pytest.raises(TypeError, match="keys must be strings"):
        rnn_kernels.Rnn.from_state_dict({1: np.zeros(3)})


def test_metadata_contradiction_and_assumptions(tmp_path: Path) -> None:
    path = lstm_file(tmp_path)
    assert rnn_kernels.Rnn.load(path).assumed == ["batch_first"]
    assert rnn_kernels.Rnn.load(path, batch_first=True).assumed == []
    # The fixtures record batch_first = false: saying True contradicts them.
    with pytest.raises(ValueError, match="contradicts"):
        rnn_kernels.Rnn.load(FIXTURES / "lstm_basic.safetensors", "rnn", batch_first=True)
    # A plain RNN from PyTorch does not say tanh or relu.
    plain = load_case(FIXTURES / "rnn_tanh_b1_t1.safetensors")
    weights = {k: v for k, v in plain.items() if k.startswith("rnn.")}
    assert "nonlinearity" in rnn_kernels.Rnn.from_state_dict(weights, "rnn").assumed
    relu = rnn_kernels.Rnn.from_state_dict(weights, "rnn", cell="rnn_relu")
    assert relu.config["mode"] == "rnn_relu" and "nonlinearity" not in relu.assumed


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path: Path) -> None:
    path = lstm_file(tmp_path)
    auto = rnn_kernels.Rnn.load(path)
    if auto.device == "cuda":
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="CUDA"):
        rnn_kernels.Rnn.load(path, device="cuda")
    with pytest.raises(ValueError, match="threads applies to the CPU"):
        rnn_kernels.Rnn.load(path, device="cuda", threads=2)
    assert "CPU" in auto.info and "LSTM" in auto.info.upper()


def test_set_weights_repacks_in_place() -> None:
    path = FIXTURES / "lstm_basic.safetensors"
    case = load_case(path)
    weights = {k.removeprefix("rnn."): v for k, v in case.items() if k.startswith("rnn.")}
    model = rnn_kernels.Rnn.load(path, prefix="rnn", device="cpu")
    ward = model.streams(case["input"].shape[1])
    doubled = {k: 2 * v for k, v in weights.items()}
    model.set_weights(doubled)
    want = rnn_kernels.Rnn.from_state_dict(doubled, device="cpu").forward(case["input"])
    for got, expected in zip(model.forward(case["input"]), want, strict=True):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(ward.step(case["input"][0]), want[0][0])  # streams follow
    with pytest.raises(ValueError, match="weight_hh_l0"):
        model.set_weights({**weights, "weight_hh_l0": weights["weight_hh_l0"][:, :-1]})
    with pytest.raises(ValueError, match="bias_ih_l0: missing"):
        model.set_weights({k: v for k, v in weights.items() if k != "bias_ih_l0"})
    with pytest.raises(ValueError, match="weight_ih_l1"):
        model.set_weights({**weights, "weight_ih_l1": weights["weight_ih_l0"]})


@pytest.mark.parametrize(("precision", "bound"), [("int8", 2e-2), ("f16", 2e-3)])
def test_reduced_precision_models(tmp_path: Path, precision: str, bound: float) -> None:
    """int8 and f16 models stay within the scheme's bounds of f32 over 48
    steps, step as they run whole sequences, and refuse what they cannot do."""
    path = lstm_file(tmp_path)
    exact = rnn_kernels.Rnn.load(path, device="cpu", threads=2)
    model = rnn_kernels.Rnn.load(path, device="cpu", threads=2, precision=precision)
    assert precision in model.info and precision not in exact.info
    x = np.random.default_rng(4).standard_normal((48, 5, 5), dtype=np.float32)
    lengths = [48, 30, 1, 48, 17]
    got, want = model.forward(x, lengths=lengths), exact.forward(x, lengths=lengths)
    for g, w in zip(got, want, strict=True):
        assert np.abs(g - w).max() <= bound
    assert np.abs(got[0] - want[0]).max() > 0  # the format is really in use
    ward = model.streams(5)
    output = model.forward(x)[0]
    # Stepping sums a step's products in another order than the whole
    # sequence does: a value within an ulp of a code boundary may take the
    # neighbouring code, so the two agree to 1e-5 at first and 2e-3 over 48
    # steps (the crate's own tests allow the same).
    np.testing.assert_allclose(ward.step(x[0]), output[0], rtol=0, atol=1e-5)
    for t in range(1, 48):
        np.testing.assert_allclose(ward.step(x[t]), output[t], rtol=0, atol=2e-3)
    # New weights are prepared in the model's format.
    from safetensors.numpy import load_file

    halved = {k: v / 2 for k, v in load_file(str(path)).items()}
    model.set_weights(halved)
    exact.set_weights(halved)
    assert precision in model.info
    got, want = model.forward(x)[0], exact.forward(x)[0]
    assert 0 < np.abs(got - want).max() <= bound
    with pytest.raises(RuntimeError, match="for inference only"):
        model.forward_train(x)
    with pytest.raises(RuntimeError, match="CPU only"):
        rnn_kernels.Rnn.load(path, device="cuda", precision=precision)


def test_unknown_precision_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown precision"):
        rnn_kernels.Rnn.load(lstm_file(tmp_path), precision="int4")


def test_openmp_team_runs_the_same_numbers(tmp_path: Path) -> None:
    """openmp= runs the model's threads on a loaded OpenMP runtime's team
    (the torch modules pass torch's): bit for bit what the crate's pool
    gives, in forward, training and streams; a runtime the process has not
    loaded is refused by name."""
    with pytest.raises(ValueError, match="openmp: /nowhere/libgomp.so.1: not a library"):
        rnn_kernels.Rnn.load(lstm_file(tmp_path), device="cpu", openmp="/nowhere/libgomp.so.1")
    ctypes = pytest.importorskip("ctypes")
    try:
        ctypes.CDLL("libgomp.so.1")
    except OSError:
        pytest.skip("no libgomp.so.1 on this machine")
    path = lstm_file(tmp_path)
    pool = rnn_kernels.Rnn.load(path, device="cpu", threads=2)
    team = rnn_kernels.Rnn.load(path, device="cpu", threads=2, openmp="libgomp.so.1")
    assert pool.openmp is None and team.openmp == "libgomp.so.1"
    rng = np.random.default_rng(4)
    x = rng.standard_normal((30, 9, 5), dtype=np.float32)
    lengths = rng.integers(1, 31, size=9)
    for got, want in zip(team.forward(x, lengths), pool.forward(x, lengths), strict=True):
        np.testing.assert_array_equal(got, want)
    grad = rng.standard_normal((30, 9, 8), dtype=np.float32)
    *_, kept_team = team.forward_train(x, lengths)
    *_, kept_pool = pool.forward_train(x, lengths)
    got, want = team.backward(kept_team, grad), pool.backward(kept_pool, grad)
    for a, b in zip(got[:3], want[:3], strict=True):
        np.testing.assert_array_equal(a, b)
    assert got[3].keys() == want[3].keys()
    for name in got[3]:
        np.testing.assert_array_equal(got[3][name], want[3][name])
    ward_team, ward_pool = team.streams(9), pool.streams(9)
    for t in range(3):
        np.testing.assert_array_equal(ward_team.step(x[t]), ward_pool.step(x[t]))
