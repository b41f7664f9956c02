"""The crate's operators (torch.ops.rnn_kernels.rnn and rnn_backward):
torch.library.opcheck, torch.compile with fullgraph=True (forward,
backward, training with an optimizer, new shapes), the reserve's lifetime.
Skipped where torch is not installed."""

import gc

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import rnn_kernels._ops as ops  # noqa: E402
import rnn_kernels.torch as rt  # noqa: E402

TOL = 2e-5


def op_args(module: nn.Module, x: torch.Tensor, **kw: object) -> tuple:
    """The operator's arguments for ``module`` (one of ours) on ``x``."""
    config = module._config()
    return (
        x,
        kw.get("h0"),
        kw.get("c0"),
        list(module._flat_weights),
        *config.args(),
        kw.get("lengths"),
        kw.get("seed"),
        kw.get("keep", True),
    )


OP_CASES = {
    "lstm-bi-h0-lengths": (
        lambda: nn.LSTM(5, 7, num_layers=2, bidirectional=True),
        lambda: dict(
            h0=torch.randn(4, 3, 7, requires_grad=True),
            c0=torch.randn(4, 3, 7, requires_grad=True),
            lengths=torch.tensor([6, 2, 4]),
        ),
    ),
    "lstm-proj-batch_first": (
        lambda: nn.LSTM(5, 7, num_layers=2, proj_size=3, batch_first=True),
        lambda: dict(),
    ),
    "gru-dropout-seed": (
        lambda: nn.GRU(5, 7, num_layers=2, dropout=0.5),
        lambda: dict(seed=torch.tensor([1234]), h0=torch.randn(2, 3, 7)),
    ),
    "rnn-relu-no-bias": (
        lambda: nn.RNN(5, 7, nonlinearity="relu", bias=False).requires_grad_(False),
        lambda: dict(keep=False),
    ),
}


@pytest.mark.parametrize("name", OP_CASES)
def test_opcheck(name: str) -> None:
    make_module, make_kw = OP_CASES[name]
    torch.manual_seed(0)
    module = rt.from_torch(make_module())
    kw = make_kw()
    keep = kw.get("keep", True)  # without a reserve, nothing may need a gradient
    x = torch.randn((3, 6, 5) if module.batch_first else (6, 3, 5), requires_grad=keep)
    args = op_args(module, x, **kw)
    torch.library.opcheck(torch.ops.rnn_kernels.rnn.default, args)
    # rnn_backward is checked through rnn's test_aot_dispatch_dynamic (its
    # fake and real kernels in the compiled backward): a direct opcheck
    # clones its inputs, and a clone of a reserve token stands for nothing.


class VitalsModel(nn.Module):
    """The seed's ICU model with ``lengths=`` in place of packing (Dynamo
    cannot trace ``pack_padded_sequence``, whoever runs the LSTM)."""

    def __init__(self, n_features: int = 6, hidden: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_features, hidden, num_layers=layers, batch_first=True, dropout=0.2)
        self.head = nn.Sequential(
            nn.Dropout(0.2), nn.Linear(hidden, 32), nn.ReLU(), nn.Linear(32, 1)
        )

    def forward(self, vitals: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        _, (h_n, _) = self.lstm(vitals, lengths=lengths)
        return self.head(h_n[-1]).squeeze(-1)


def reference_model(model: VitalsModel) -> nn.Module:
    """The same model on PyTorch's LSTM, packing for lengths."""

    class Reference(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(6, 64, num_layers=2, batch_first=True, dropout=0.2)
            self.head = nn.Sequential(
                nn.Dropout(0.2), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1)
            )

        def forward(self, vitals: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            packed = nn.utils.rnn.pack_padded_sequence(
                vitals, lengths, batch_first=True, enforce_sorted=False
            )
            _, (h_n, _) = self.lstm(packed)
            return self.head(h_n[-1]).squeeze(-1)

    ref = Reference()
    ref.load_state_dict(model.state_dict())
    return ref


def test_fullgraph_compile_matches_pytorch_forward_and_backward() -> None:
    torch.manual_seed(1)
    model = rt.convert(VitalsModel()).eval()
    ref = reference_model(model).eval()
    compiled = rt.compile(model, fullgraph=True)
    for batch, steps in [(9, 48), (5, 31), (12, 7)]:  # new shapes: recompiled, dynamic
        x = torch.randn(batch, steps, 6)
        lengths = torch.randint(1, steps + 1, (batch,))
        lengths[0] = steps
        with torch.no_grad():
            assert (compiled(x, lengths) - ref(x, lengths)).abs().max() <= TOL
        grads = []
        for m in (compiled, ref):
            xi = x.clone().requires_grad_(True)
            m.zero_grad()
            (m(xi, lengths) ** 2).sum().backward()
            grads.append([xi.grad, *(p.grad for p in m.parameters())])
        for a, b in zip(*grads, strict=True):
            assert (a - b).abs().max() <= 1e-4


def test_fullgraph_compiled_training_follows_pytorch() -> None:
    """An optimizer changes the weights in place between compiled steps:
    the crate must pack them again (version counters) every step."""
    torch.manual_seed(2)
    model = rt.convert(VitalsModel()).eval()  # eval: dropout off, the same numbers
    ref = reference_model(model).eval()
    compiled = rt.compile(model, fullgraph=True)
    x = torch.randn(16, 20, 6)
    lengths = torch.randint(1, 21, (16,))
    target = torch.rand(16)
    losses = []
    for m, params in ((compiled, model.parameters()), (ref, ref.parameters())):
        opt = torch.optim.Adam(params, lr=1e-2)
        run = []
        for _ in range(5):
            opt.zero_grad()
            loss = nn.functional.binary_cross_entropy_with_logits(m(x, lengths), target)
            loss.backward()
            opt.step()
            run.append(loss.item())
        losses.append(run)
    assert losses[0][0] != losses[0][-1]
    for a, b in zip(*losses, strict=True):
        assert abs(a - b) <= 1e-5, losses


def test_compile_refuses_unconverted_modules() -> None:
    with pytest.raises(TypeError, match="lstm still run"):
        rt.compile(VitalsModel())


def test_reserves_are_freed_with_their_graph() -> None:
    torch.manual_seed(3)
    ours = rt.from_torch(nn.LSTM(5, 7, num_layers=2))
    before = len(ops._reserves)
    x = torch.randn(6, 3, 5, requires_grad=True)
    out = torch.ops.rnn_kernels.rnn(*op_args(ours, x))[0]
    assert len(ops._reserves) == before + 1
    out.sum().backward(retain_graph=True)
    out.sum().backward()  # twice: the reserve outlives one backward
    del out
    gc.collect()
    assert len(ops._reserves) == before


def test_eager_training_runs_beside_the_operators() -> None:
    """Eager training is an autograd.Function around the extension (no
    operator token): the same gradients as the operator's, a retained graph
    runs backward twice, and a second derivative is an error, not a wrong one."""
    torch.manual_seed(4)
    ours = rt.from_torch(nn.LSTM(5, 7, num_layers=2))
    before = len(ops._reserves)
    x = torch.randn(6, 3, 5, requires_grad=True)
    out = ours(x)[0]
    assert len(ops._reserves) == before
    out.sum().backward(retain_graph=True)
    eager = x.grad.clone()
    out.sum().backward()
    assert torch.equal(x.grad, 2 * eager)
    x.grad = None
    torch.ops.rnn_kernels.rnn(*op_args(ours, x))[0].sum().backward()
    assert torch.equal(x.grad, eager)
    (grad,) = torch.autograd.grad(ours(x)[0].sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="does not require grad|once_differentiable"):
        grad.sum().backward()


def test_backward_without_a_live_reserve_is_an_error() -> None:
    ours = rt.from_torch(nn.GRU(5, 7))
    x = torch.randn(4, 2, 5)
    output, h_n, c_n, _ = torch.ops.rnn_kernels.rnn(*op_args(ours, x, keep=False))
    args = (output, h_n, c_n, x, list(ours._flat_weights), *ours._config().args())
    with pytest.raises(RuntimeError, match="no reserve"):
        torch.ops.rnn_kernels.rnn_backward(torch.empty(0, dtype=torch.int64), *args)
    with pytest.raises(RuntimeError, match="not a live token"):
        torch.ops.rnn_kernels.rnn_backward(torch.zeros(1, dtype=torch.int64), *args)


def test_prepared_models_are_cached_and_repacked_on_change() -> None:
    ref = nn.LSTM(5, 7)
    ours = rt.from_torch(ref)
    config, weights = ours._config(), ours._flat_weights
    first = ops.native_model(config, weights)
    assert ops.native_model(config, weights) is first
    x = torch.randn(3, 2, 5)
    with torch.no_grad():
        weights[0].add_(1.0)  # in place: repacked into the same model
        ref.weight_ih_l0.add_(1.0)
        assert ops.native_model(config, weights) is first
        assert (ours(x)[0] - ref(x)[0]).abs().max() <= TOL
        ours.weight_hh_l0 = nn.Parameter(ours.weight_hh_l0 * 2)  # replaced: prepared anew
        ref.weight_hh_l0 = nn.Parameter(ref.weight_hh_l0 * 2)
        assert ops.native_model(ours._config(), ours._flat_weights) is not first
        assert (ours(x)[0] - ref(x)[0]).abs().max() <= TOL


def test_threads_follow_torch_unless_given() -> None:
    ours = rt.from_torch(nn.LSTM(5, 7))
    before = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            assert ops.native_model(ours._config(), ours._flat_weights).threads == n
        ours.threads = 1
        torch.set_num_threads(2)
        assert ops.native_model(ours._config(), ours._flat_weights).threads == 1
    finally:
        torch.set_num_threads(before)
