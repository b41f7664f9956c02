"""A model whose LSTM runs on the crate trains under
DistributedDataParallel (gloo, two processes on loopback, half the batch
each) to the same weights as one process over the whole batch. Skipped
where torch is not installed."""

import socket
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch import nn  # noqa: E402

import rnn_kernels.torch as rt  # noqa: E402

BATCH, STEPS, FEATURES, HIDDEN, EPOCHS = 16, 12, 6, 32, 4


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(FEATURES, HIDDEN, num_layers=2, batch_first=True)
        self.head = nn.Linear(HIDDEN, 1)

    def forward(self, vitals: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        _, (h_n, _) = self.lstm(vitals, lengths=lengths)
        return self.head(h_n[-1]).squeeze(-1)


def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(BATCH, STEPS, FEATURES, generator=gen)
    lengths = torch.randint(1, STEPS + 1, (BATCH,), generator=gen)
    y = (torch.rand(BATCH, generator=gen) < 0.3).float()
    return x, lengths, y


def fresh_model() -> nn.Module:
    torch.manual_seed(0)
    return rt.convert(Model(), threads=1)


def train(model: nn.Module, x: torch.Tensor, lengths: torch.Tensor, y: torch.Tensor) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(EPOCHS):
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(model(x, lengths), y)
        loss.backward()
        opt.step()


def worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model = nn.parallel.DistributedDataParallel(fresh_model())
        x, lengths, y = data()
        half = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
        train(model, x[half], lengths[half], y[half])
        if rank == 0:
            torch.save(model.module.state_dict(), out)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_over_two_processes_equals_one_process(tmp_path: Path) -> None:
    out = tmp_path / "ddp.pt"
    mp.spawn(worker, args=(free_port(), str(out)), nprocs=2, join=True)
    ddp = torch.load(out)

    model = fresh_model()
    train(model, *data())
    assert ddp.keys() == model.state_dict().keys()
    moved = 0.0
    for name, want in model.state_dict().items():
        assert (ddp[name] - want).abs().max() <= 1e-5, name
        moved = max(moved, (want - fresh_model().state_dict()[name]).abs().max().item())
    assert moved > 1e-3  # the weights did train
