"""The crate's forward and backward as torch operators.

``torch.ops.rnn_kernels.rnn`` and ``torch.ops.rnn_kernels.rnn_backward``
are defined with ``torch.library``, with fake (meta) implementations and an
autograd formula, so that ``torch.compile(..., fullgraph=True)`` traces
through them and ``torch.library.opcheck`` passes. Their arguments are
tensors and numbers only: the network's configuration, its weights as a
list in ``nn.RNNBase._flat_weights`` order, and the inputs.

In eager mode a training forward skips them: ``train`` is a plain
``torch.autograd.Function`` around the extension, which saves the
dispatcher's and ``torch.library``'s Python autograd wrapper's quarter of a
millisecond a step (their argument flattening and default filling); the
operators are what ``torch.compile`` traces.

What a training forward keeps for its backward (the crate's reserve) lives
in Rust; the ``reserve`` output is a one-element int64 token standing for
it (found by its address, its value always 0), much as cuDNN's RNN returns
its reserve space as a tensor. The reserve is freed with its token
(autograd holds the token as long as the graph can run backward).

Prepared (packed) models are cached by the identity, shape and version of
their weight tensors: an optimizer step or ``load_state_dict`` changes a
version, and the next call packs the weights again. Their CPU threads are
torch's own OpenMP team (``openmp=`` of ``Rnn``): between torch's operators
libgomp's idle threads spin for milliseconds, and a second pool beside them
would find no free core.
"""

import functools
import itertools
import os
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from rnn_kernels._native import Reserve, Rnn

__all__ = ["Config", "clear_cache", "infer", "native_model", "train"]

_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


class Config(NamedTuple):
    """What the operators need to know of a network besides its weights (a
    tuple: it is hashed on every call)."""

    cell: str
    num_layers: int
    bidirectional: bool
    bias: bool
    proj_size: int
    batch_first: bool
    dropout: float
    threads: int  # 0: torch.get_num_threads() at each call

    def args(self) -> tuple[Any, ...]:
        """The operators' configuration arguments, in schema order."""
        return tuple(self)

    def weight_names(self) -> list[str]:
        """PyTorch's parameter names, in ``_flat_weights`` order."""
        names = []
        for layer, suffix in itertools.product(
            range(self.num_layers), ["", "_reverse"][: 1 + self.bidirectional]
        ):
            kinds = ["weight_ih", "weight_hh"]
            if self.bias:
                kinds += ["bias_ih", "bias_hh"]
            if self.proj_size:
                kinds.append("weight_hr")
            names += [f"{kind}_l{layer}{suffix}" for kind in kinds]
        return names


_CONFIG_SCHEMA = (
    "str cell, int num_layers, bool bidirectional, bool bias, int proj_size, "
    "bool batch_first, float dropout, int threads"
)

torch.library.define(
    "rnn_kernels::rnn",
    f"(Tensor x, Tensor? h0, Tensor? c0, Tensor[] weights, {_CONFIG_SCHEMA}, "
    "Tensor? lengths, Tensor? seed, bool keep) -> (Tensor, Tensor, Tensor, Tensor)",
)
torch.library.define(
    "rnn_kernels::rnn_backward",
    f"(Tensor reserve, Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor x, "
    f"Tensor[] weights, {_CONFIG_SCHEMA}) -> (Tensor, Tensor, Tensor, Tensor[])",
)


class _Prepared(NamedTuple):
    versions: tuple[int, ...]
    weights: list[torch.Tensor]
    native: Rnn


# Prepared models, least recently used first, by configuration, threads, the
# OpenMP runtime and the weights' addresses. An entry holds its weights, so
# that their storage stays alive and no other tensor can take their
# addresses while it stands.
_CACHE_SIZE = 16
_models: "OrderedDict[tuple[Any, ...], _Prepared]" = OrderedDict()


def _state(config: Config, weights: Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
    return {
        name: w.detach().numpy() for name, w in zip(config.weight_names(), weights, strict=True)
    }


@functools.cache
def torch_openmp() -> str | None:
    """The OpenMP runtime torch's CPU operators run on: its library's path
    as the process loaded it; None when torch's parallel backend is not
    OpenMP or the library is not found (the crate's own pool runs then)."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        with open("/proc/self/maps") as maps:
            # address perms offset dev inode [path]
            fields = (line.split(maxsplit=5) for line in maps)
            paths = {f[5].strip() for f in fields if len(f) == 6}
    except OSError:
        return None
    runtimes = sorted(
        p for p in paths if os.path.basename(p).startswith(("libgomp", "libiomp", "libomp"))
    )
    # torch's own copy first, where a wheel brings one beside other libraries'.
    torch_dir = os.path.dirname(torch.__file__)
    runtimes.sort(key=lambda p: not p.startswith(torch_dir))
    return runtimes[0] if runtimes else None


def native_model(config: Config, weights: Sequence[torch.Tensor]) -> Rnn:
    """The crate's model for these weights as they are now: repacked (in
    place) only when one changed, prepared anew when one was replaced."""
    threads, openmp = config.threads or torch.get_num_threads(), torch_openmp()
    key = (config, threads, openmp, tuple(w.data_ptr() for w in weights))
    versions = tuple(w._version for w in weights)
    entry = _models.get(key)
    same = entry is not None and all(
        a is b or (a.shape == b.shape and a.stride() == b.stride())
        for a, b in zip(entry.weights, weights, strict=True)
    )
    if same and entry.versions == versions:
        _models.move_to_end(key)
        return entry.native
    if same:  # changed in place (an optimizer step): repack into the same model
        entry.native.set_weights(_state(config, weights))
        native = entry.native
    else:
        native = Rnn.from_state_dict(
            _state(config, weights),
            cell=config.cell,
            batch_first=config.batch_first,
            gru_original=False if config.cell == "gru" else None,
            dropout=config.dropout,
            device="cpu",
            threads=threads,
            openmp=openmp,
        )
    _models[key] = _Prepared(versions, list(weights), native)
    _models.move_to_end(key)
    while len(_models) > _CACHE_SIZE:
        _models.popitem(last=False)
    return native


def clear_cache() -> None:
    """Forget every prepared model (they are rebuilt on their next call)."""
    _models.clear()


# Training forwards' reserves, by the address of their token's one element:
# the token's value is always 0, so that two runs of one forward give equal
# outputs (``opcheck`` compares them). Each entry has a serial number, so
# that a late finalizer never removes a newer token's entry.
_reserves: dict[int, tuple[int, Rnn, Reserve]] = {}
_serials = itertools.count(1)


def _token(native: Rnn, reserve: Reserve) -> torch.Tensor:
    token = torch.zeros(1, dtype=torch.int64)
    key, serial = token.data_ptr(), next(_serials)
    _reserves[key] = (serial, native, reserve)
    weakref.finalize(token, _release, key, serial)
    return token


def _release(key: int, serial: int) -> None:
    entry = _reserves.get(key)
    if entry is not None and entry[0] == serial:
        del _reserves[key]


def as_numpy(t: torch.Tensor | None) -> np.ndarray | None:
    """A tensor's numbers as a numpy array for the extension (a view when
    already contiguous), None for None."""
    return None if t is None else t.detach().contiguous().numpy()


def _optional(a: np.ndarray | None) -> torch.Tensor | None:
    return None if a is None else torch.from_numpy(a)


def _tensor(t: torch.Tensor | None) -> torch.Tensor:
    """An operator's always-present output: empty where there is none."""
    return torch.empty(0) if t is None else t


def infer(
    config: Config,
    weights: Sequence[torch.Tensor],
    x: torch.Tensor,
    lengths: torch.Tensor | None,
    h0: torch.Tensor | None,
    c0: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The crate's inference forward on tensors: ``(output, h_n, c_n)``,
    ``c_n`` None but for an LSTM."""
    native = native_model(config, weights)
    output, h_n, c_n = native.forward(as_numpy(x), as_numpy(lengths), as_numpy(h0), as_numpy(c0))
    return torch.from_numpy(output), torch.from_numpy(h_n), _optional(c_n)


def _forward_train(
    config: Config,
    weights: Sequence[torch.Tensor],
    x: torch.Tensor,
    lengths: torch.Tensor | None,
    h0: torch.Tensor | None,
    c0: torch.Tensor | None,
    seed: int | None,
) -> tuple[Rnn, torch.Tensor, torch.Tensor, torch.Tensor | None, Reserve]:
    """The extension's training forward on tensors (``seed`` draws the
    dropout masks): the model that ran it, ``output``, ``h_n``, ``c_n``
    (None but for an LSTM) and the reserve for its backward."""
    native = native_model(config, weights)
    output, h_n, c_n, reserve = native.forward_train(
        as_numpy(x), as_numpy(lengths), as_numpy(h0), as_numpy(c0), seed
    )
    return native, torch.from_numpy(output), torch.from_numpy(h_n), _optional(c_n), reserve


def _native_backward(
    native: Rnn,
    reserve: Reserve,
    config: Config,
    grad_output: torch.Tensor,
    grad_h_n: torch.Tensor,
    grad_c_n: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
    """The extension's backward on tensors: the gradients of the input,
    ``h0``, ``c0`` (None but for an LSTM) and every weight, in
    ``_flat_weights`` order."""
    gx, gh0, gc0, gw = native.backward(
        reserve, as_numpy(grad_output), as_numpy(grad_h_n), as_numpy(grad_c_n)
    )
    grads = [torch.from_numpy(gw[name]) for name in config.weight_names()]
    return torch.from_numpy(gx), torch.from_numpy(gh0), _optional(gc0), grads


class _Train(torch.autograd.Function):
    """The crate's training forward and backward for eager autograd: the
    reserve stays on the context until the graph is freed."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        config: Config,
        lengths: torch.Tensor | None,
        seed: int | None,
        x: torch.Tensor,
        h0: torch.Tensor | None,
        c0: torch.Tensor | None,
        *weights: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        native, output, h_n, c_n, reserve = _forward_train(
            config, weights, x, lengths, h0, c0, seed
        )
        ctx.native, ctx.reserve, ctx.config = native, reserve, config
        ctx.has_h0, ctx.has_c0 = h0 is not None, c0 is not None
        return (output, h_n) if c_n is None else (output, h_n, c_n)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_c_n = grads[2] if len(grads) == 3 else None
        gx, gh0, gc0, gw = _native_backward(
            ctx.native, ctx.reserve, ctx.config, grads[0], grads[1], grad_c_n
        )
        return (
            None,
            None,
            None,
            gx,
            gh0 if ctx.has_h0 else None,
            gc0 if ctx.has_c0 else None,
            *gw,
        )


def train(
    config: Config,
    weights: Sequence[torch.Tensor],
    x: torch.Tensor,
    lengths: torch.Tensor | None,
    h0: torch.Tensor | None,
    c0: torch.Tensor | None,
    seed: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The crate's training forward on tensors, in eager mode (gradients
    through the crate's backward; ``seed`` draws the dropout masks):
    ``(output, h_n, c_n)``, ``c_n`` None but for an LSTM."""
    outputs = _Train.apply(config, lengths, seed, x, h0, c0, *weights)
    return outputs[0], outputs[1], outputs[2] if len(outputs) == 3 else None


@torch.library.impl("rnn_kernels::rnn", "CPU")
def _rnn(
    x: torch.Tensor,
    h0: torch.Tensor | None,
    c0: torch.Tensor | None,
    weights: list[torch.Tensor],
    *rest: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    config, (lengths, seed, keep) = Config(*rest[:8]), rest[8:]
    no_token = torch.empty(0, dtype=torch.int64)
    if not keep and seed is None:
        output, h_n, c_n = infer(config, weights, x, lengths, h0, c0)
        return output, h_n, _tensor(c_n), no_token
    seed_value = None if seed is None else int(seed.item())
    native, output, h_n, c_n, reserve = _forward_train(
        config, weights, x, lengths, h0, c0, seed_value
    )
    token = _token(native, reserve) if keep else no_token
    return output, h_n, _tensor(c_n), token


@torch.library.register_fake("rnn_kernels::rnn")
def _rnn_fake(
    x: torch.Tensor,
    h0: torch.Tensor | None,
    c0: torch.Tensor | None,
    weights: list[torch.Tensor],
    *rest: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    config, keep = Config(*rest[:8]), rest[10]
    hidden = weights[0].shape[0] // _GATES[config.cell]
    out = config.proj_size or hidden
    d = 1 + config.bidirectional
    batch, seq = (x.shape[0], x.shape[1]) if config.batch_first else (x.shape[1], x.shape[0])
    output_shape = (batch, seq, d * out) if config.batch_first else (seq, batch, d * out)
    c_n_shape = (config.num_layers * d, batch, hidden) if config.cell == "lstm" else (0,)
    return (
        x.new_empty(output_shape),
        x.new_empty((config.num_layers * d, batch, out)),
        x.new_empty(c_n_shape),
        x.new_empty((1 if keep else 0,), dtype=torch.int64),
    )


@torch.library.impl("rnn_kernels::rnn_backward", "CPU")
def _rnn_backward(
    reserve: torch.Tensor,
    grad_output: torch.Tensor,
    grad_h_n: torch.Tensor,
    grad_c_n: torch.Tensor,
    x: torch.Tensor,
    weights: list[torch.Tensor],
    *config_args: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    config = Config(*config_args)
    if reserve.numel() != 1:
        raise RuntimeError(
            "rnn_kernels::rnn_backward: no reserve; run rnn_kernels::rnn with keep=True"
        )
    kept = _reserves.get(reserve.data_ptr())
    if kept is None:
        raise RuntimeError(
            "rnn_kernels::rnn_backward: reserve: not a live token made by rnn_kernels::rnn"
        )
    _, native, kept_reserve = kept
    gx, gh0, gc0, grads = _native_backward(
        native,
        kept_reserve,
        config,
        grad_output,
        grad_h_n,
        grad_c_n if config.cell == "lstm" else None,
    )
    return gx, gh0, _tensor(gc0), grads


@torch.library.register_fake("rnn_kernels::rnn_backward")
def _rnn_backward_fake(
    reserve: torch.Tensor,
    grad_output: torch.Tensor,
    grad_h_n: torch.Tensor,
    grad_c_n: torch.Tensor,
    x: torch.Tensor,
    weights: list[torch.Tensor],
    *config_args: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    return (
        torch.empty_like(x),
        torch.empty_like(grad_h_n),
        torch.empty_like(grad_c_n),
        [torch.empty_like(w) for w in weights],
    )


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
    x, h0, c0, weights, *config_args = inputs[:12]
    ctx.config_args = config_args
    ctx.has_h0, ctx.has_c0, ctx.n_weights = h0 is not None, c0 is not None, len(weights)
    ctx.save_for_backward(output[3], x, *weights)


def _backward(
    ctx: Any,
    grad_output: torch.Tensor,
    grad_h_n: torch.Tensor,
    grad_c_n: torch.Tensor,
    _grad_reserve: torch.Tensor,
) -> tuple[Any, ...]:
    reserve, x, *weights = ctx.saved_tensors
    gx, gh0, gc0, gw = torch.ops.rnn_kernels.rnn_backward(
        reserve, grad_output, grad_h_n, grad_c_n, x, weights, *ctx.config_args
    )
    return (
        gx,
        gh0 if ctx.has_h0 else None,
        gc0 if ctx.has_c0 else None,
        gw,
        *([None] * 11),
    )


torch.library.register_autograd("rnn_kernels::rnn", _backward, setup_context=_setup_context)
