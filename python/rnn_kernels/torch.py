"""Drop-in ``torch.nn.LSTM``, ``GRU`` and ``RNN`` that run on rnn-kernels.

``LSTM``, ``GRU`` and ``RNN`` subclass PyTorch's modules: the constructor,
parameters, ``state_dict``, ``load_state_dict``, ``.to()``, ``hx`` tuples,
``batch_first``, unbatched input and ``PackedSequence`` inputs behave as
PyTorch's. ``forward`` also takes ``lengths=`` (one per sequence) to run
padded sequences for their own lengths without packing: the output is zero
past each sequence's end and ``h_n`` is each sequence's last step, as packing
would give.

What runs on the crate: float32 modules and inputs on the CPU, in inference
and in training (gradients for the input, the initial states and every
parameter come from the crate's backward). Inter-layer dropout in
``train()`` mode uses the crate's masks, drawn from a seed taken from
torch's generator: reproducible under ``torch.manual_seed``, but not
PyTorch's own masks. Anything else (another dtype, a CUDA tensor) runs
PyTorch's own forward, after a one-time warning: never a wrong answer.

Weights are packed for the crate once, and again only when a parameter
changes (an optimizer step, ``load_state_dict``), detected by the tensors'
version counters.

Threads: ``threads=None`` (the default) uses ``torch.get_num_threads()`` at
each call, ``threads=N`` fixes it; either way they are torch's own OpenMP
team (torch's libgomp), not a second pool beside it, whose threads would
find torch's idle ones spinning on the other cores.

``torch.compile`` goes through the operators of ``rnn_kernels._ops``;
in eager mode, inference calls the extension directly and training goes
through a ``torch.autograd.Function`` around it. ``compile`` is
``torch.compile`` for models converted here.

    model = rnn_kernels.torch.convert(model)  # every nn.LSTM/GRU/RNN inside, in place
    compiled = rnn_kernels.torch.compile(model, fullgraph=True)
"""

import warnings
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from rnn_kernels._ops import Config, clear_cache, infer, train

__all__ = ["GRU", "LSTM", "RNN", "clear_cache", "compile", "convert", "from_torch"]

_warned: set[str] = set()


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"rnn_kernels.torch: {reason}; running PyTorch's own forward", stacklevel=3)


def _lengths(lengths: torch.Tensor | list[int]) -> torch.Tensor:
    """``lengths=`` as an int64 tensor on the CPU; fractions are refused,
    not rounded."""
    t = torch.as_tensor(lengths)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"lengths: expected integers, found {t.dtype}")
    return t.to(device="cpu", dtype=torch.int64)


class _CrateRNNBase(nn.RNNBase):
    """What LSTM, GRU and RNN share: the packed model, its cache key, and
    the forward on the crate. Attributes are read with defaults so that an
    existing ``nn.LSTM`` can become one by changing its class."""

    threads: int | None = None

    def _cell(self) -> str:
        if self.mode == "RNN_TANH":
            return "rnn_tanh"
        if self.mode == "RNN_RELU":
            return "rnn_relu"
        return self.mode.lower()

    def _why_not_native(self, x: torch.Tensor) -> str | None:
        if x.device.type != "cpu":
            return f"input on {x.device} (the crate runs CPU tensors here)"
        if x.dtype != torch.float32:
            return f"input of dtype {x.dtype} (the crate computes in float32)"
        for w in self._flat_weights:
            if w is None or w.device.type != "cpu" or w.dtype != torch.float32:
                return "parameters not float32 on the CPU"
        return None

    def _config(self) -> Config:
        return Config(
            self._cell(),
            self.num_layers,
            self.bidirectional,
            self.bias,
            self.proj_size,
            self.batch_first,
            float(self.dropout),
            self.threads or 0,
        )

    def _run(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor | None,
        h0: torch.Tensor | None,
        c0: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        config, weights = self._config(), self._flat_weights
        dropout = self.training and self.dropout > 0 and self.num_layers > 1
        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in [x, h0, c0, *weights]
        )
        compiling = torch.compiler.is_compiling()
        if not (needs_grad or dropout or compiling):
            # Inference in eager mode: straight to the extension, without
            # the dispatcher's few microseconds.
            return infer(config, weights, x, lengths, h0, c0)
        seed = torch.randint(0, 2**62, (1,)) if dropout else None
        if not compiling:
            # Training in eager mode: an autograd.Function, not the operators.
            return train(config, weights, x, lengths, h0, c0, None if seed is None else int(seed))
        output, h_n, c_n, _ = torch.ops.rnn_kernels.rnn(
            x, h0, c0, weights, *config.args(), lengths, seed, needs_grad
        )
        return output, h_n, c_n if self.mode == "LSTM" else None

    def forward(  # type: ignore[override]
        self,
        input: torch.Tensor | PackedSequence,
        hx: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
        *,
        lengths: torch.Tensor | list[int] | None = None,
    ) -> tuple[Any, Any]:
        is_lstm = self.mode == "LSTM"
        packed = isinstance(input, PackedSequence)
        why = self._why_not_native(input.data if packed else input)
        if why is not None:
            _warn_once(why)
            if lengths is not None:
                raise ValueError(
                    f"lengths= needs the crate, and {why}; pack the input with "
                    "torch.nn.utils.rnn.pack_padded_sequence instead"
                )
            return super().forward(input, hx)
        padded, packing = input, None
        if packed:
            if lengths is not None:
                raise ValueError("lengths= with a PackedSequence: the packing gives the lengths")
            packing = _Packing.of(input, self.batch_first)
            padded, lengths = packing.pad(input.data), packing.lengths
        elif lengths is not None:
            lengths = _lengths(lengths)

        unbatched = not packed and padded.dim() == 2
        if unbatched:
            padded = padded.unsqueeze(0 if self.batch_first else 1)
        h0, c0 = (hx if is_lstm else (hx, None)) if hx is not None else (None, None)
        if unbatched and h0 is not None:
            h0 = h0.unsqueeze(1)
            c0 = c0.unsqueeze(1) if c0 is not None else None

        output, h_n, c_n = self._run(padded, lengths, h0, c0)

        if unbatched:
            output = output.squeeze(0 if self.batch_first else 1)
            h_n = h_n.squeeze(1)
            c_n = c_n.squeeze(1) if c_n is not None else None
        if packing is not None:
            output = PackedSequence(
                packing.pack(output),
                input.batch_sizes,
                input.sorted_indices,
                input.unsorted_indices,
            )
        return output, ((h_n, c_n) if is_lstm else h_n)


class _Packing(NamedTuple):
    """Where a PackedSequence's rows sit in the padded layout the crate runs
    (``[B, T]`` batch-first, else ``[T, B]``), and each sequence's length in
    the batch's original order. Unpacking and packing are then one scatter
    and one gather (differentiable), not PyTorch's padding functions."""

    rows: torch.Tensor  # [N]: the padded row of each packed row
    lengths: torch.Tensor  # [B]
    layout: tuple[int, int]  # (B, T) or (T, B)

    @staticmethod
    def of(packed: PackedSequence, batch_first: bool) -> "_Packing":
        batch_sizes = packed.batch_sizes.numpy()
        steps, batch = len(batch_sizes), int(batch_sizes[0])
        # Packed row i is step t(i)'s slot j(i) of the batch sorted by length.
        t = np.repeat(np.arange(steps), batch_sizes)
        j = np.arange(len(t)) - (np.cumsum(batch_sizes) - batch_sizes)[t]
        sorted_lengths = (batch_sizes[None, :] > np.arange(batch)[:, None]).sum(1)
        b, lengths = j, sorted_lengths
        if packed.sorted_indices is not None:
            b = packed.sorted_indices.numpy()[j]
            lengths = sorted_lengths[packed.unsorted_indices.numpy()]
        rows = b * steps + t if batch_first else t * batch + b
        layout = (batch, steps) if batch_first else (steps, batch)
        return _Packing(torch.from_numpy(rows), torch.from_numpy(lengths), layout)

    def pad(self, data: torch.Tensor) -> torch.Tensor:
        """``data`` [N, F] padded with zeros to ``[B, T, F]`` or ``[T, B, F]``."""
        padded = data.new_zeros(self.layout[0] * self.layout[1], data.shape[1])
        return padded.index_copy(0, self.rows, data).view(*self.layout, -1)

    def pack(self, output: torch.Tensor) -> torch.Tensor:
        """The packed rows ``[N, F]`` of a padded output."""
        return output.reshape(self.layout[0] * self.layout[1], -1).index_select(0, self.rows)


class LSTM(_CrateRNNBase, nn.LSTM):
    """``torch.nn.LSTM`` on rnn-kernels; ``threads=`` caps the crate's CPU
    threads (default: ``torch.get_num_threads()`` at each call)."""

    def __init__(self, *args: Any, threads: int | None = None, **kwargs: Any) -> None:
        nn.LSTM.__init__(self, *args, **kwargs)
        self.threads = threads


class GRU(_CrateRNNBase, nn.GRU):
    """``torch.nn.GRU`` on rnn-kernels; ``threads=`` caps the crate's CPU
    threads (default: ``torch.get_num_threads()`` at each call)."""

    def __init__(self, *args: Any, threads: int | None = None, **kwargs: Any) -> None:
        nn.GRU.__init__(self, *args, **kwargs)
        self.threads = threads


class RNN(_CrateRNNBase, nn.RNN):
    """``torch.nn.RNN`` on rnn-kernels; ``threads=`` caps the crate's CPU
    threads (default: ``torch.get_num_threads()`` at each call)."""

    def __init__(self, *args: Any, threads: int | None = None, **kwargs: Any) -> None:
        nn.RNN.__init__(self, *args, **kwargs)
        self.threads = threads


_OURS: dict[type, type] = {nn.LSTM: LSTM, nn.GRU: GRU, nn.RNN: RNN}


def from_torch(module: nn.Module, *, threads: int | None = None) -> _CrateRNNBase:
    """A copy of ``module`` (an ``nn.LSTM``, ``nn.GRU`` or ``nn.RNN``) that
    runs on the crate: the same hyperparameters, parameters copied, on the
    same device and dtype. ``threads`` as in ``LSTM``."""
    ours = _OURS.get(type(module))
    if ours is None:
        raise TypeError(f"from_torch: expected nn.LSTM, nn.GRU or nn.RNN, found {type(module)}")
    new = ours.__new__(ours)
    nn.Module.__init__(new)
    new.__dict__.update(
        {k: v for k, v in module.__dict__.items() if k not in ("_parameters", "_buffers")}
    )
    new._modules = dict(module._modules)
    new._buffers = {k: None if b is None else b.clone() for k, b in module._buffers.items()}
    new._parameters = {
        k: None if p is None else nn.Parameter(p.detach().clone(), p.requires_grad)
        for k, p in module._parameters.items()
    }
    new._init_flat_weights()
    new.threads = threads
    return new


def convert(model: nn.Module, *, threads: int | None = None) -> nn.Module:
    """Every ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` inside ``model`` (or
    ``model`` itself) made to run on the crate, in place: the same module
    objects and parameters, so optimizers and references stay valid.
    Returns ``model``."""
    for module in model.modules():
        ours = _OURS.get(type(module))
        if ours is not None:
            module.__class__ = ours
            module.threads = threads
    return model


def compile(model: nn.Module, **kwargs: Any) -> nn.Module:
    """``torch.compile(model, **kwargs)`` for a model whose recurrent
    modules run on the crate (``convert`` it first).

    Dynamo refuses to trace any ``nn.LSTM``, ``nn.GRU`` or ``nn.RNN``
    instance, ours included, unless ``torch._dynamo.config.allow_rnn`` is
    set; the compiled model's calls set it for their own duration, so that
    Dynamo traces our modules' forward (the ``rnn_kernels::rnn`` operator,
    which compiles with ``fullgraph=True``) while PyTorch's own modules
    elsewhere in the process keep Dynamo's default. Setting the flag yourself
    and calling ``torch.compile`` is the same, as long as the process
    compiles no unconverted RNN module (Dynamo cannot trace those)."""
    unconverted = [
        name or type(model).__name__
        for name, module in model.named_modules()
        if type(module) in _OURS
    ]
    if unconverted:
        raise TypeError(
            f"compile: {', '.join(unconverted)} still run(s) PyTorch's own RNN, which "
            "Dynamo cannot trace; rnn_kernels.torch.convert(model) first"
        )
    compiled = torch.compile(model, **kwargs)
    compiled.forward = torch._dynamo.config.patch(allow_rnn=True)(compiled.forward)
    return compiled
