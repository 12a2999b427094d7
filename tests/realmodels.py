"""Small forecasters exported by torch the way real ones reach us (seeded, a few seconds each at most).

Each builder writes an ONNX file and returns its path. The exporter and its options are part of the
point: torch's legacy exporter (``dynamo=False``) writes recurrent cells as ONNX GRU/LSTM ops with a
zero initial state built from Shape/Gather/ConstantOfShape, GELU as the Erf pattern, and shape
arithmetic for anything that reads ``x.shape``; the dynamo exporter (``dynamo=True``, needs onnxscript)
writes ``Gelu`` at opset 20, ``DFT`` for ``torch.fft.rfft`` and weights as external data.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np


def _torch() -> Any:
    import torch

    return torch


@contextlib.contextmanager
def _quiet():  # the exporters print progress and deprecation notes
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _legacy(module: Any, example: Any, path: Path, opset: int = 17, dynamic_batch: bool = True) -> Path:
    torch = _torch()
    axes = {"x": {0: "batch"}, "y": {0: "batch"}} if dynamic_batch else None
    with _quiet(), torch.no_grad():
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes=axes,
        )
    return path


def _dynamo(module: Any, example: Any, path: Path, opset: int, dynamic_batch: bool, external_data: bool) -> Path:
    torch = _torch()
    shapes = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic_batch else None
    with _quiet(), torch.no_grad():
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            dynamo=True,
            opset_version=opset,
            input_names=["x"],
            output_names=["y"],
            dynamic_shapes=shapes,
            external_data=external_data,
        )
    return path


class _Recurrent:  # built lazily: torch.nn is only imported when a builder runs
    @staticmethod
    def make(kind: str, channels: int, hidden: int) -> Any:
        torch = _torch()

        class OneStep(torch.nn.Module):
            """x[B, L, C] -> x[:, -1] + head(rnn(x)[:, -1]): the next state of C variables."""

            def __init__(self) -> None:
                super().__init__()
                self.rnn = getattr(torch.nn, kind)(channels, hidden, batch_first=True)
                self.head = torch.nn.Linear(hidden, channels)

            def forward(self, x: Any) -> Any:
                y, _ = self.rnn(x)
                return x[:, -1] + 0.1 * self.head(y[:, -1])

        return OneStep()


def _fit(module: Any, record: np.ndarray | None, L: int, epochs: int, seed: int) -> Any:
    """Train a one-step model on a record [N, C] (next step from the last L), seeded; untouched without one."""
    if record is None:
        return module
    torch = _torch()
    x = torch.as_tensor(np.lib.stride_tricks.sliding_window_view(record[:-1], L, axis=0).transpose(0, 2, 1).copy())
    y = torch.as_tensor(record[L:])
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(module.parameters(), lr=3e-3)
    module.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(128):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(module(x[idx]), y[idx])
            loss.backward()
            opt.step()
    return module.eval()


def gru_onestep(
    path: Path, L: int = 48, C: int = 5, hidden: int = 32, seed: int = 0, train_on: np.ndarray | None = None, epochs: int = 3
) -> Path:
    """x[B, L, C] -> y[B, C]: torch GRU (batch_first) + linear head, legacy export, opset 17, dynamic batch.

    The graph: Transpose -> GRU (W/R/B initializers, linear_before_reset=1, initial state = zeros built
    from Shape/Gather/Concat/ConstantOfShape of x) -> Squeeze/Transpose/Gather of the last step -> Gemm.
    ``train_on``: a record [N, C] to train it on first (``epochs`` passes, seeded), as a user's model is."""
    _torch().manual_seed(seed)
    return _legacy(_fit(_Recurrent.make("GRU", C, hidden), train_on, L, epochs, seed), _torch().randn(2, L, C), path)


def lstm_onestep(
    path: Path, L: int = 48, C: int = 5, hidden: int = 32, seed: int = 0, train_on: np.ndarray | None = None, epochs: int = 3
) -> Path:
    """x[B, L, C] -> y[B, C]: torch LSTM (batch_first) + linear head, legacy export, opset 17, dynamic batch.

    Same graph shape as `gru_onestep`, with an ONNX LSTM (zero initial h and c from ConstantOfShape)."""
    _torch().manual_seed(seed)
    return _legacy(_fit(_Recurrent.make("LSTM", C, hidden), train_on, L, epochs, seed), _torch().randn(2, L, C), path)


def _attention_block(d: int, heads: int, mlp: int) -> Any:
    torch = _torch()

    class Block(torch.nn.Module):
        """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)) with GELU (exact, erf)."""

        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
            self.q, self.k, self.v, self.o = (torch.nn.Linear(d, d) for _ in range(4))
            self.fc1, self.fc2 = torch.nn.Linear(d, mlp), torch.nn.Linear(mlp, d)
            self.heads = heads

        def forward(self, x: Any, mask: Any = None) -> Any:
            b, n, _ = x.shape
            h = self.ln1(x)
            dh = d // self.heads

            def split(t: Any) -> Any:
                return t.reshape(b, n, self.heads, dh).transpose(1, 2)

            q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
            s = q @ k.transpose(-1, -2) / math.sqrt(dh)
            if mask is not None:
                s = s + mask
            a = torch.softmax(s, dim=-1) @ v
            x = x + self.o(a.transpose(1, 2).reshape(b, n, d))
            return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x))))

    return Block()


def _trained_norms(module: Any) -> Any:
    """LayerNorm scales and shifts away from 1 and 0, as after training (the dynamo exporter would
    otherwise merge the identical initial ones into one initializer)."""
    torch = _torch()
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.add_(0.1 * torch.randn_like(m.weight))
                m.bias.add_(0.1 * torch.randn_like(m.bias))
    return module


def patch_univariate(path: Path, L: int = 64, H: int = 8, patch: int = 8, d: int = 32, seed: int = 0) -> Path:
    """x[B, L] -> y[B, H]: a patch forecaster (PatchTST-like), dynamo export at opset 20, dynamic batch.

    Patches of ``patch`` steps -> Linear to ``d`` + positional embedding -> one pre-norm attention block
    (LayerNormalization, 2 heads, MLP with GELU, exported as the opset-20 ``Gelu`` op) -> LayerNorm ->
    flatten -> Linear to H; the window's mean is removed on the way in and added on the way out."""
    torch = _torch()
    torch.manual_seed(seed)
    n = L // patch
    block = _attention_block(d, 2, 2 * d)

    class Patch(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Linear(patch, d)
            self.pos = torch.nn.Parameter(0.1 * torch.randn(n, d))
            self.block, self.norm = block, torch.nn.LayerNorm(d)
            self.head = torch.nn.Linear(n * d, H)

        def forward(self, x: Any) -> Any:
            mu = x.mean(dim=1, keepdim=True)
            h = self.embed((x - mu).reshape(x.shape[0], n, patch)) + self.pos
            h = self.norm(self.block(h))
            return mu + self.head(h.reshape(x.shape[0], n * d))

    return _dynamo(_trained_norms(Patch()), torch.randn(2, L), path, opset=20, dynamic_batch=True, external_data=False)


def circular_conv_state(path: Path, C: int = 2, lat: int = 8, lon: int = 16, hidden: int = 8, seed: int = 0) -> Path:
    """x[B, C, lat, lon] -> y[B, C, lat, lon]: a gridded state model, periodic in longitude, legacy export.

    The wrap-around pad is written as weather codes write it, from the tensor's own size
    (``x[..., w - p:]``), so the legacy exporter computes the slice bounds at run time
    (Shape -> Gather -> Sub -> Unsqueeze -> Slice); latitude is zero-padded by the Conv itself.
    Modules: ``wa.c1``, ``wa.c2`` (3x3 convs), residual ``x + 0.1 * c2(tanh(c1(wrap(x))))``."""
    torch = _torch()
    torch.manual_seed(seed)

    class Wrap(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = torch.nn.Conv2d(C, hidden, 3, padding=(1, 0))
            self.c2 = torch.nn.Conv2d(hidden, C, 3, padding=(1, 0))

        @staticmethod
        def wrap(x: Any, p: int = 1) -> Any:
            w = x.shape[-1]
            return torch.cat([x[..., w - p :], x, x[..., :p]], dim=-1)

        def forward(self, x: Any) -> Any:
            return self.c2(self.wrap(torch.tanh(self.c1(self.wrap(x)))))

    class State(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wa = Wrap()

        def forward(self, x: Any) -> Any:
            return x + 0.1 * self.wa(x)

    return _legacy(State(), torch.randn(1, C, lat, lon), path)


def window_transformer(path: Path, L: int = 32, H: int = 8, Q: int = 3, d: int = 16, seed: int = 0) -> Path:
    """x[2, L, 1] -> y[2, H, Q] (Q quantiles): a pretrained-style window forecaster as found on model hubs.

    Dynamo export at opset 20 with EXTERNAL weight data (``path`` plus ``path.name + '.data'`` beside it)
    and a FIXED batch of 2. A causal attention mask is a float buffer with -inf above the diagonal (an
    initializer); a spectral branch takes ``torch.fft.rfft`` of the window (exported as ``DFT``) and adds
    a projection of its real/imaginary parts to every token. Returns ``path``."""
    torch = _torch()
    torch.manual_seed(seed)
    block = _attention_block(d, 2, 2 * d)
    k = L // 2 + 1

    class Window(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Linear(1, d)
            self.spec = torch.nn.Linear(2 * k, d)
            self.block, self.norm = block, torch.nn.LayerNorm(d)
            self.head = torch.nn.Linear(L * d, H * Q)
            self.register_buffer("mask", torch.triu(torch.full((L, L), float("-inf")), diagonal=1))

        def forward(self, x: Any) -> Any:
            spec = torch.view_as_real(torch.fft.rfft(x[..., 0], dim=1)).reshape(2, 2 * k)
            h = self.embed(x) + self.spec(spec / L).unsqueeze(1)
            h = self.norm(self.block(h, self.mask))
            return self.head(h.reshape(2, L * d)).reshape(2, H, Q)

    return _dynamo(_trained_norms(Window()), torch.randn(2, L, 1), path, opset=20, dynamic_batch=False, external_data=True)


def transformer_block(path: Path, L: int = 16, C: int = 3, H: int = 4, d: int = 16, seed: int = 0) -> Path:
    """x[B, L, C] -> y[B, H, C]: embed -> pre-norm attention block -> per-variable linear over time.

    Legacy export, opset 17, dynamic batch: LayerNormalization ops and GELU as the Erf pattern
    x * 0.5 * (1 + Erf(x / sqrt(2))); the batch-dependent reshapes of the attention heads are Shape
    arithmetic."""
    torch = _torch()
    torch.manual_seed(seed)
    block = _attention_block(d, 2, 2 * d)

    class Former(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.block = torch.nn.Linear(C, d), block
            self.out = torch.nn.Linear(d, C)
            self.time = torch.nn.Linear(L, H)

        def forward(self, x: Any) -> Any:
            h = self.out(self.block(self.embed(x)))  # [B, L, C]
            return self.time(h.transpose(1, 2)).transpose(1, 2)  # [B, H, C]

    return _legacy(_trained_norms(Former()), torch.randn(2, L, C), path)


BUILDERS = {
    "gru_onestep": gru_onestep,
    "lstm_onestep": lstm_onestep,
    "patch_univariate": patch_univariate,
    "circular_conv_state": circular_conv_state,
    "window_transformer": window_transformer,
    "transformer_block": transformer_block,
}


def example_input(proto: Any, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded N(0, 1) inputs for a model's float inputs (symbolic dimensions take ``batch``)."""
    rng = np.random.default_rng(seed)
    inits = {i.name for i in proto.graph.initializer}
    out = {}
    for v in proto.graph.input:
        if v.name in inits:
            continue
        dims = [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else batch for d in v.type.tensor_type.shape.dim]
        out[v.name] = rng.standard_normal(dims).astype(np.float32)
    return out
