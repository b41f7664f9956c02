from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

_Array = npt.ArrayLike
_F32 = npt.NDArray[np.float32]
_Cell = Literal["lstm", "gru", "rnn_tanh", "rnn_relu"]
_Device = Literal["auto", "cpu", "cuda"]
_Precision = Literal["f32", "int8", "f16"]

class Rnn:
    @staticmethod
    def load(
        path: str | PathLike[str],
        prefix: str | None = None,
        *,
        batch_first: bool | None = None,
        cell: _Cell | None = None,
        gru_original: bool | None = None,
        dropout: float | None = None,
        device: _Device = "auto",
        threads: int | None = None,
        precision: _Precision = "f32",
        openmp: str | None = None,
    ) -> Rnn: ...
    @staticmethod
    def from_state_dict(
        state_dict: Mapping[str, Any],
        prefix: str | None = None,
        *,
        batch_first: bool | None = None,
        cell: _Cell | None = None,
        gru_original: bool | None = None,
        dropout: float | None = None,
        device: _Device = "auto",
        threads: int | None = None,
        precision: _Precision = "f32",
        openmp: str | None = None,
    ) -> Rnn: ...
    def forward(
        self,
        x: _Array,
        lengths: Sequence[int] | npt.NDArray[np.integer] | None = None,
        h0: _Array | None = None,
        c0: _Array | None = None,
    ) -> tuple[_F32, _F32, _F32 | None]: ...
    def forward_train(
        self,
        x: _Array,
        lengths: Sequence[int] | npt.NDArray[np.integer] | None = None,
        h0: _Array | None = None,
        c0: _Array | None = None,
        seed: int | None = None,
    ) -> tuple[_F32, _F32, _F32 | None, Reserve]: ...
    def backward(
        self,
        reserve: Reserve,
        grad_output: _Array,
        grad_h_n: _Array | None = None,
        grad_c_n: _Array | None = None,
    ) -> tuple[_F32, _F32, _F32 | None, dict[str, _F32]]: ...
    def set_weights(self, state_dict: Mapping[str, Any]) -> None: ...
    def streams(self, batch: int) -> Streams: ...
    @property
    def config(self) -> dict[str, Any]: ...
    @property
    def device(self) -> Literal["cpu", "cuda"]: ...
    @property
    def threads(self) -> int: ...
    @property
    def openmp(self) -> str | None: ...
    @property
    def assumed(self) -> list[str]: ...
    @property
    def info(self) -> str: ...

class Reserve:
    """What a training forward kept for its backward (opaque)."""

class Streams:
    def step(self, x: _Array) -> _F32: ...
    def reset(self, rows: Sequence[int]) -> None: ...
    @property
    def h(self) -> _F32: ...
    @property
    def c(self) -> _F32 | None: ...
    @property
    def batch(self) -> int: ...
    def __len__(self) -> int: ...
