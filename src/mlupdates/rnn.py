"""Recurrent networks: a from-scratch Elman RNN, the vanishing-gradient probe, a baseline.

The chapter needs three things from recurrences: the textbook update
``h(k) = tanh(W_ih x(k) + W_hh h(k-1) + b)`` spelled out (and checked against
``torch.nn.RNN``); a measurement of how fast the gradient reaching an input fades with
its distance from the loss (Bengio et al. 1994; Pascanu et al. 2013), for plain, LSTM and
GRU layers; and an LSTM encoder-decoder (Sutskever et al. 2014) as the recurrent baseline
for the transformer on the same toy tasks.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mlupdates import runtime


class ElmanRNN(nn.Module):
    """Single-layer tanh RNN written as the loop it is, one time step per iteration.

    The loop makes the sequential dependency explicit: step ``k`` cannot start before
    step ``k-1`` has produced ``h(k-1)``, which is why a recurrent layer needs ``T``
    sequential operations however many processors are available.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ValueError(
                f"input_size={input_size} and hidden_size={hidden_size} must be positive"
            )
        self.hidden_size = hidden_size
        self.w_ih = nn.Linear(input_size, hidden_size)
        self.w_hh = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Run over ``x`` ``(B, T, input_size)``; return all states ``(B, T, H)`` and the last."""
        if x.dim() != 3 or x.shape[-1] != self.w_ih.in_features:
            raise ValueError(
                f"x must have shape (batch, time, {self.w_ih.in_features}), got {tuple(x.shape)}"
            )
        h = x.new_zeros(x.shape[0], self.hidden_size) if h is None else h
        states = []
        for k in range(x.shape[1]):
            h = torch.tanh(self.w_ih(x[:, k]) + self.w_hh(h))  # h(k) from x(k) and h(k-1)
            states.append(h)
        return torch.stack(states, dim=1), h

    @torch.no_grad()
    def load_from_torch(self, rnn: nn.RNN) -> ElmanRNN:
        """Copy the weights of a one-layer, tanh, batch-first ``torch.nn.RNN``."""
        if rnn.num_layers != 1 or rnn.nonlinearity != "tanh" or rnn.bidirectional:
            raise ValueError("rnn must be a single-layer, unidirectional tanh nn.RNN")
        if (rnn.input_size, rnn.hidden_size) != (self.w_ih.in_features, self.hidden_size):
            raise ValueError(
                f"rnn is {rnn.input_size}->{rnn.hidden_size}, this layer is "
                f"{self.w_ih.in_features}->{self.hidden_size}"
            )
        self.w_ih.weight.copy_(rnn.weight_ih_l0)
        self.w_hh.weight.copy_(rnn.weight_hh_l0)
        self.w_ih.bias.copy_(rnn.bias_ih_l0)
        self.w_hh.bias.copy_(rnn.bias_hh_l0)
        return self


def make_recurrent(kind: str, input_size: int, hidden_size: int) -> nn.Module:
    """A batch-first PyTorch ``RNN``, ``LSTM`` or ``GRU`` layer named by ``kind``."""
    layers = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
    if kind not in layers:
        raise ValueError(f"kind={kind!r} must be one of {sorted(layers)}")
    return layers[kind](input_size, hidden_size, batch_first=True)


def gradient_by_distance(
    layer: nn.Module, length: int, input_size: int, batch: int = 32, seed: int | None = None
) -> Tensor:
    """Norm of ``d(sum of last output) / d x(T - d)`` for ``d = 0 .. length-1``.

    Back-propagation through time multiplies one Jacobian per step; if those have norm
    below one the product, and with it the learning signal from distant inputs, shrinks
    exponentially with distance. Entry ``d`` of the result is the gradient norm (over the
    batch and input features) for the input ``d`` steps before the output. The inputs are
    drawn on the CPU from ``seed`` (default: stream 0 of the chapter's seed) and moved to
    the layer's device; the result is returned on the CPU.
    """
    if length < 2:
        raise ValueError(f"length={length} must be at least 2")
    gen = torch.Generator().manual_seed(runtime.resolve_seed(seed, 0))
    device = next(layer.parameters()).device
    x = torch.randn(batch, length, input_size, generator=gen).to(device).requires_grad_()
    out, _ = layer(x)
    out[:, -1].sum().backward()
    return x.grad.norm(dim=(0, 2)).flip(0).detach().cpu()


class LSTMSeq2Seq(nn.Module):
    """Encoder-decoder LSTM without attention (Sutskever et al. 2014).

    The encoder's final state is the only thing the decoder learns about the input, so
    the whole source sequence must fit in ``2 * hidden_size`` numbers: the bottleneck
    that attention was introduced to remove (Bahdanau et al. 2014).
    """

    def __init__(
        self, vocab_size: int, hidden_size: int = 128, embed_size: int = 32, num_layers: int = 1
    ) -> None:
        super().__init__()
        for name, value in (
            ("vocab_size", vocab_size),
            ("hidden_size", hidden_size),
            ("embed_size", embed_size),
            ("num_layers", num_layers),
        ):
            if value < 1:
                raise ValueError(f"{name}={value} must be positive")
        self.embed = nn.Embedding(vocab_size, embed_size)
        self.encoder = nn.LSTM(embed_size, hidden_size, num_layers, batch_first=True)
        self.decoder = nn.LSTM(embed_size, hidden_size, num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        _, state = self.encoder(self.embed(src))
        out, _ = self.decoder(self.embed(tgt_in), state)
        return self.head(out)  # (B, Lt, vocab)

    @torch.no_grad()
    def generate(self, src: Tensor, length: int, bos: int = 0) -> Tensor:
        """Greedy decoding of ``length`` tokens from the encoder's final state."""
        if length < 1:
            raise ValueError(f"length={length} must be positive")
        _, state = self.encoder(self.embed(src))
        tok = torch.full((src.shape[0], 1), bos, dtype=torch.long, device=src.device)
        outs = []
        for _ in range(length):
            out, state = self.decoder(self.embed(tok), state)
            tok = self.head(out[:, -1]).argmax(-1, keepdim=True)
            outs.append(tok)
        return torch.cat(outs, dim=1)
