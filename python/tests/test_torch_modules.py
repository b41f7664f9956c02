"""rnn_kernels.torch against torch.nn's own modules: outputs, gradients,
PackedSequence, lengths=, state_dict, repacking after an optimizer step,
fallback. Skipped where torch is not installed."""

import itertools
import warnings

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import rnn_kernels.torch as rt  # noqa: E402

TOL = 2e-5


def configs() -> list[tuple[type, dict]]:
    out = []
    for cls, layers, bidi, batch_first in itertools.product(
        [nn.LSTM, nn.GRU, nn.RNN], [1, 2], [False, True], [False, True]
    ):
        kwargs = dict(num_layers=layers, bidirectional=bidi, batch_first=batch_first)
        out.append((cls, kwargs))
    out.append((nn.LSTM, dict(num_layers=2, proj_size=3)))
    out.append((nn.RNN, dict(num_layers=2, nonlinearity="relu")))
    out.append((nn.GRU, dict(num_layers=2, bias=False)))
    return out


def ids(case: tuple[type, dict]) -> str:
    return case[0].__name__ + "-" + "-".join(f"{k}={v}" for k, v in case[1].items())


def make(cls: type, kwargs: dict, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    ref = cls(5, 7, **kwargs)
    return ref, rt.from_torch(ref)


def close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> None:
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= tol, (a - b).abs().max().item()


def states(ref: nn.Module, batch: int) -> object:
    d = 2 if ref.bidirectional else 1
    out = ref.proj_size or ref.hidden_size
    h0 = torch.randn(ref.num_layers * d, batch, out)
    if isinstance(ref, nn.LSTM):
        return h0, torch.randn(ref.num_layers * d, batch, ref.hidden_size)
    return h0


def flat(result: tuple) -> list[torch.Tensor]:
    output, hidden = result
    hidden = list(hidden) if isinstance(hidden, tuple) else [hidden]
    return [output.data if hasattr(output, "batch_sizes") else output, *hidden]


@pytest.mark.parametrize("case", configs(), ids=ids)
def test_forward_and_gradients_match_torch(case: tuple[type, dict]) -> None:
    ref, ours = make(*case)
    x = torch.randn((3, 6, 5) if ref.batch_first else (6, 3, 5))
    hx = states(ref, 3)
    results = []
    for module in (ref, ours):
        xi = x.clone().requires_grad_(True)
        hi = (
            tuple(h.clone().requires_grad_(True) for h in hx)
            if isinstance(hx, tuple)
            else hx.clone().requires_grad_(True)
        )
        outs = flat(module(xi, hi))
        loss = sum((o * torch.linspace(-1, 1, o.numel()).reshape(o.shape)).sum() for o in outs)
        loss.backward()
        hgrads = [h.grad for h in hi] if isinstance(hi, tuple) else [hi.grad]
        results.append((outs, xi.grad, hgrads, [p.grad for p in module.parameters()]))
    (o1, gx1, gh1, gp1), (o2, gx2, gh2, gp2) = results
    for a, b in zip(o1, o2, strict=True):
        close(a.detach(), b.detach())
    close(gx1, gx2, 1e-4)
    for a, b in zip(gh1 + gp1, gh2 + gp2, strict=True):
        close(a, b, 1e-4)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_sequences_and_lengths(cls: type, enforce_sorted: bool) -> None:
    ref, ours = make(cls, dict(num_layers=2, bidirectional=True))
    lengths = [6, 4, 4, 1] if enforce_sorted else [3, 6, 1, 4]
    x = torch.randn(6, 4, 5)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    hx = states(ref, 4)
    with torch.no_grad():
        want, got = flat(ref(packed, hx)), flat(ours(packed, hx))
        for a, b in zip(want, got, strict=True):
            close(a, b)
        # lengths= on the padded input: the same numbers, output zero past the end.
        output, hidden = ours(x, hx, lengths=lengths)
        padded, _ = pad_packed_sequence(ref(packed, hx)[0])
        close(output[: padded.shape[0]], padded)
        assert not output[padded.shape[0] :].any()
        for a, b in zip(flat((output, hidden))[1:], want[1:], strict=True):
            close(a, b)
    # Gradients through the packing.
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    for module, xi in zip((ref, ours), xs, strict=True):
        out = module(pack_padded_sequence(xi, lengths, enforce_sorted=enforce_sorted))[0]
        (out.data**2).sum().backward()
    close(xs[0].grad, xs[1].grad, 1e-4)


def test_unbatched_input() -> None:
    ref, ours = make(nn.LSTM, dict(num_layers=2))
    x = torch.randn(6, 5)
    with torch.no_grad():
        for a, b in zip(flat(ref(x)), flat(ours(x)), strict=True):
            close(a, b)


def test_state_dict_round_trip_and_repacking_after_an_optimizer_step() -> None:
    ref, ours = make(nn.LSTM, dict(num_layers=2))
    assert ours.state_dict().keys() == ref.state_dict().keys()
    ours.load_state_dict(ref.state_dict())
    x, target = torch.randn(8, 4, 5), torch.randn(8, 4, 7)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.5)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.5)
    for _ in range(3):
        for module, opt in ((ref, opt_ref), (ours, opt_ours)):
            opt.zero_grad()
            ((module(x)[0] - target) ** 2).mean().backward()
            opt.step()
        with torch.no_grad():
            close(ref(x)[0], ours(x)[0], 1e-5)
    # In-place edits are seen too.
    with torch.no_grad():
        ref.weight_hh_l0.mul_(0.5)
        ours.weight_hh_l0.mul_(0.5)
        close(ref(x)[0], ours(x)[0], 1e-5)


def test_convert_in_place_keeps_modules_and_parameters() -> None:
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(5, 7, batch_first=True)
            self.head = nn.Linear(7, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.lstm(x)[0][:, -1])

    torch.manual_seed(1)
    model = Model()
    x = torch.randn(3, 9, 5)
    with torch.no_grad():
        want = model(x)
    lstm, params = model.lstm, list(model.parameters())
    assert rt.convert(model) is model
    assert model.lstm is lstm and isinstance(lstm, rt.LSTM) and isinstance(lstm, nn.LSTM)
    assert list(model.parameters()) == params
    with torch.no_grad():
        close(model(x), want)


def test_dropout_is_the_crates_and_reproducible() -> None:
    _, ours = make(nn.LSTM, dict(num_layers=2, dropout=0.5))
    x = torch.randn(6, 3, 5)
    ours.train()
    torch.manual_seed(5)
    a = ours(x)[0]
    torch.manual_seed(5)
    b = ours(x)[0]
    assert torch.equal(a, b)
    ours.eval()
    with torch.no_grad():
        assert not torch.equal(ours(x)[0], a)


def test_other_dtypes_fall_back_to_torch_with_one_warning() -> None:
    ref, ours = make(nn.GRU, dict(num_layers=1))
    ref, ours = ref.double(), ours.double()
    x = torch.randn(4, 2, 5, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            close(ref(x)[0], ours(x)[0], 1e-12)
            ours(x)
    assert sum("float32" in str(w.message) for w in caught) <= 1
    with pytest.raises(ValueError, match="lengths"):
        ours(x, lengths=[4, 2])


def test_from_torch_refuses_other_modules() -> None:
    with pytest.raises(TypeError, match="nn.LSTM"):
        rt.from_torch(nn.Linear(2, 2))


def test_modules_run_on_torchs_openmp_team() -> None:
    """The modules' prepared models run their threads on torch's OpenMP team
    (a second pool beside libgomp's spinning threads finds no free core),
    and give the numbers the crate's own pool gives, bit for bit."""
    from rnn_kernels import _ops

    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("this torch does not run its operators on OpenMP")
    runtime = _ops.torch_openmp()
    assert runtime is not None and "omp" in runtime
    ref, ours = make(nn.LSTM, dict(num_layers=2))
    ours.threads = 2
    x = torch.randn(40, 16, 5, requires_grad=True)

    def run() -> list[torch.Tensor]:
        x.grad = None
        ours.zero_grad()
        output, (h_n, c_n) = ours(x)
        (output.sum() + h_n.sum()).backward()
        return [output, h_n, c_n, x.grad, *(p.grad for p in ours.parameters())]

    on_team = run()
    native = _ops.native_model(ours._config(), ours._flat_weights)
    assert native.openmp == runtime
    original = _ops.torch_openmp
    _ops.clear_cache()
    _ops.torch_openmp = lambda: None
    try:
        on_pool = run()
        assert _ops.native_model(ours._config(), ours._flat_weights).openmp is None
    finally:
        _ops.torch_openmp = original
        _ops.clear_cache()
    for a, b in zip(on_team, on_pool, strict=True):
        assert torch.equal(a, b)
