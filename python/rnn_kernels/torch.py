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

    model = rnn_kernels.torch.convert(model)  # every nn.LSTM/GRU/RNN inside, in place
"""

import warnings
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnn_kernels._native import Reserve, Rnn

__all__ = ["GRU", "LSTM", "RNN", "convert", "from_torch"]

_warned: set[str] = set()


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"rnn_kernels.torch: {reason}; running PyTorch's own forward", stacklevel=3)


def _numpy(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().contiguous().numpy()


class _Native(torch.autograd.Function):
    """One forward and backward of the crate, as one autograd node whose
    inputs are the sequence, the initial states and every weight."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        native: Rnn,
        names: list[str],
        seed: int | None,
        lengths: list[int] | None,
        x: torch.Tensor,
        h0: torch.Tensor | None,
        c0: torch.Tensor | None,
        *weights: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        output, h_n, c_n, reserve = native.forward_train(
            _numpy(x), lengths, _numpy(h0), _numpy(c0), seed
        )
        ctx.native, ctx.reserve, ctx.names = native, reserve, names
        ctx.has_h0, ctx.has_c0 = h0 is not None, c0 is not None
        outs = [torch.from_numpy(output), torch.from_numpy(h_n)]
        if c_n is not None:
            outs.append(torch.from_numpy(c_n))
        return tuple(outs)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        reserve: Reserve = ctx.reserve
        grad_c_n = _numpy(grads[2]) if len(grads) > 2 else None
        gx, gh0, gc0, gw = ctx.native.backward(
            reserve, _numpy(grads[0]), _numpy(grads[1]), grad_c_n
        )
        weight_grads = [torch.from_numpy(gw[name]) for name in ctx.names]
        return (
            None,
            None,
            None,
            None,
            torch.from_numpy(gx),
            torch.from_numpy(gh0) if ctx.has_h0 else None,
            torch.from_numpy(gc0) if ctx.has_c0 and gc0 is not None else None,
            *weight_grads,
        )


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

    def _native_model(self) -> Rnn:
        """The crate's model for the parameters as they are now: packed
        again only when one was replaced or changed in place."""
        key = (
            tuple((w.data_ptr(), w._version) for w in self._flat_weights),
            self.dropout,
            self.threads,
        )
        cached = self.__dict__.get("_rnn_kernels_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        weights = {
            name: w.detach().numpy()
            for name, w in zip(self._flat_weights_names, self._flat_weights, strict=True)
        }
        native = Rnn.from_state_dict(
            weights,
            cell=self._cell(),
            batch_first=self.batch_first,
            gru_original=False if self.mode == "GRU" else None,
            dropout=self.dropout,
            device="cpu",
            threads=self.threads,
        )
        self.__dict__["_rnn_kernels_cache"] = (key, native)
        return native

    def _run(
        self,
        x: torch.Tensor,
        lengths: list[int] | None,
        h0: torch.Tensor | None,
        c0: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        native = self._native_model()
        dropout = self.training and self.dropout > 0 and self.num_layers > 1
        seed = int(torch.randint(0, 2**62, (1,)).item()) if dropout else None
        tensors = [x, h0, c0, *self._flat_weights]
        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in tensors
        )
        if needs_grad or seed is not None:
            outs = _Native.apply(
                native, self._flat_weights_names, seed, lengths, x, h0, c0, *self._flat_weights
            )
            return outs[0], outs[1], outs[2] if len(outs) > 2 else None
        output, h_n, c_n = native.forward(_numpy(x), lengths, _numpy(h0), _numpy(c0))
        return (
            torch.from_numpy(output),
            torch.from_numpy(h_n),
            None if c_n is None else torch.from_numpy(c_n),
        )

    def forward(  # type: ignore[override]
        self,
        input: torch.Tensor | PackedSequence,
        hx: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
        *,
        lengths: torch.Tensor | list[int] | None = None,
    ) -> tuple[Any, Any]:
        is_lstm = self.mode == "LSTM"
        packed = isinstance(input, PackedSequence)
        padded = pad_packed_sequence(input, batch_first=self.batch_first)[0] if packed else input
        why = self._why_not_native(padded)
        if why is not None:
            _warn_once(why)
            if lengths is not None:
                raise ValueError(
                    f"lengths= needs the crate, and {why}; pack the input with "
                    "torch.nn.utils.rnn.pack_padded_sequence instead"
                )
            return super().forward(input, hx)
        if packed:
            if lengths is not None:
                raise ValueError("lengths= with a PackedSequence: the packing gives the lengths")
            lengths = _packed_lengths(input)
        elif lengths is not None:
            lengths = [int(n) for n in lengths]

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
        if packed:
            output = _repack(output, input, self.batch_first)
        return output, ((h_n, c_n) if is_lstm else h_n)


def _packed_lengths(packed: PackedSequence) -> list[int]:
    """Each sequence's length, in the batch's original order."""
    batch_sizes = packed.batch_sizes
    sorted_lengths = (
        batch_sizes.unsqueeze(0) > torch.arange(int(batch_sizes[0])).unsqueeze(1)
    ).sum(1)
    if packed.unsorted_indices is not None:
        sorted_lengths = sorted_lengths[packed.unsorted_indices]
    return [int(n) for n in sorted_lengths]


def _repack(output: torch.Tensor, like: PackedSequence, batch_first: bool) -> PackedSequence:
    """``output`` (padded, original order) packed in ``like``'s order, so
    that its data lines up with PyTorch's own."""
    if batch_first:
        output = output.transpose(0, 1)
    if like.sorted_indices is not None:
        output = output.index_select(1, like.sorted_indices)
    lengths = _packed_lengths(like)
    if like.sorted_indices is not None:
        lengths = [lengths[i] for i in like.sorted_indices.tolist()]
    data = pack_padded_sequence(output, lengths, enforce_sorted=True).data
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


class LSTM(_CrateRNNBase, nn.LSTM):
    """``torch.nn.LSTM`` on rnn-kernels; ``threads=`` caps the CPU threads."""

    def __init__(self, *args: Any, threads: int | None = None, **kwargs: Any) -> None:
        nn.LSTM.__init__(self, *args, **kwargs)
        self.threads = threads


class GRU(_CrateRNNBase, nn.GRU):
    """``torch.nn.GRU`` on rnn-kernels; ``threads=`` caps the CPU threads."""

    def __init__(self, *args: Any, threads: int | None = None, **kwargs: Any) -> None:
        nn.GRU.__init__(self, *args, **kwargs)
        self.threads = threads


class RNN(_CrateRNNBase, nn.RNN):
    """``torch.nn.RNN`` on rnn-kernels; ``threads=`` caps the CPU threads."""

    def __init__(self, *args: Any, threads: int | None = None, **kwargs: Any) -> None:
        nn.RNN.__init__(self, *args, **kwargs)
        self.threads = threads


_OURS: dict[type, type] = {nn.LSTM: LSTM, nn.GRU: GRU, nn.RNN: RNN}


def from_torch(module: nn.Module, *, threads: int | None = None) -> _CrateRNNBase:
    """A copy of ``module`` (an ``nn.LSTM``, ``nn.GRU`` or ``nn.RNN``) that
    runs on the crate: the same hyperparameters, parameters copied, on the
    same device and dtype."""
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
