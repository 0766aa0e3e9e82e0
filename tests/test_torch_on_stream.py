"""``on_stream``: whether a tensor is read off the residual stream (a view of it, or rows that
combine its tokens). Normalised tokens are rank-deficient (each row has mean zero), where the
least-squares fit must still find an exact combination every time."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from netmorph_core.torch.transformer_stream import on_stream  # noqa: E402


@pytest.mark.parametrize("seed", range(12))
def test_a_mean_of_normalised_tokens_is_found(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randn(1, 18, 32, generator=gen, dtype=torch.float64)
    tokens[0, 5] = tokens[0, 4]  # two equal tokens: a second rank deficiency
    stream = torch.nn.functional.layer_norm(tokens, (32,))
    pooled = (stream[:, 0] + stream[:, 1]) / 2
    assert on_stream(pooled, [stream])
    assert on_stream(stream[:, 0], [stream])  # a view


@pytest.mark.parametrize("seed", range(4))
def test_a_vector_outside_the_tokens_span_is_not(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    stream = torch.nn.functional.layer_norm(torch.randn(1, 18, 32, generator=gen), (32,))
    other = torch.randn(1, 32, generator=gen)
    assert not on_stream(other.double(), [stream.double()])
    assert not on_stream(torch.randn(1, 18, 32, generator=gen), [stream.double()[:, :, :]])


def test_tokens_read_off_the_stream_are_found_with_more_tokens_than_the_width() -> None:
    """65 tokens of width 8: a view, the mean of the tokens after the first, and tokens
    gathered by index are read off the stream; a layer's output is not."""
    gen = torch.Generator().manual_seed(0)
    stream = torch.randn(2, 65, 8, generator=gen, dtype=torch.float64)
    ends = torch.tensor([64, 30])
    assert on_stream(stream[:, 0], [stream])
    assert on_stream(stream[:, 1:].mean(1), [stream])
    assert on_stream(stream[torch.arange(2), ends], [stream])
    layer = torch.nn.Linear(8, 8).double()
    assert not on_stream(layer(stream[:, 0]).detach(), [stream])
