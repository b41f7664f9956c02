"""PyTorch's ``nn.RNN``, ``nn.LSTM`` and ``nn.GRU``, exactly, on rnn-kernels.

The numpy API::

    import rnn_kernels

    model = rnn_kernels.Rnn.load("model.safetensors", prefix="lstm", batch_first=True)
    output, h_n, c_n = model.forward(x, lengths=lengths)  # PyTorch's shapes and meaning

    ward = model.streams(256)  # 256 streams, their state kept in Rust
    h = ward.step(x_t)  # [256, H]: the last layer's new h
    ward.reset([3, 17])  # two new patients

A model runs on the GPU when ``device="auto"`` finds one, else on the fast CPU
path (``threads`` of them). Computation is in float32: float16 and float64
inputs are converted, other dtypes refused. ``precision="int8"`` (8-bit
weights and activations, as ``torch.ao.quantization.quantize_dynamic`` but
scaled per batch row) or ``"f16"`` (16-bit weights) prepares a smaller model
for inference on the CPU; the README's "Reduced precision" gives its errors
and speed. Errors are Python exceptions with
the crate's one-line messages: ``ValueError`` for a shape or a configuration,
``TypeError`` for a dtype, ``FileNotFoundError`` and other ``OSError`` for
files, ``MemoryError`` for a request larger than the machine.
"""

from rnn_kernels._native import Rnn, Streams

__all__ = ["Rnn", "Streams"]
