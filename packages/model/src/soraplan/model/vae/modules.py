"""Building blocks of WF-VAE. Tensors are videos laid out (batch, channels, time, height, width).

Every layer but one is causal in time: output frame t depends on input frames <= t only. Layers
that look back in time (`CausalLayer`) can stream: inside `causal_stream(module)`, each call
carries the trailing input frames it still needs into the next call, so running a video through
the model in time chunks gives exactly the output of one full pass. The exception is upstream's
linear temporal upsampling (`TemporalLerp2x`, decoder only), which looks one frame ahead: in a
stream it holds that output frame back until the next chunk arrives. All other layers act on
each frame on its own (2D convs, channel LayerNorm, per-frame attention), which chunking cannot
change. GroupNorm (an ablation option) normalises over time and so breaks both properties.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

NormType = Literal["layernorm", "groupnorm"]


class StreamingLayer(nn.Module):
    """Base of layers that keep state between calls inside `causal_stream(...)`.

    Outside a stream every call is a whole video. Inside, calls are consecutive time chunks;
    `last_chunk` is set (by `mark_last_chunk`) before the final one, for layers that hold
    frames back until they see what follows.
    """

    def __init__(self) -> None:
        super().__init__()
        self.streaming = False
        self.last_chunk = False

    def reset_stream(self) -> None:
        """Forget what earlier chunks left behind."""

    def start_stream(self) -> None:
        self.streaming, self.last_chunk = True, False
        self.reset_stream()

    def end_stream(self) -> None:
        self.streaming, self.last_chunk = False, False
        self.reset_stream()

    @property
    def more_chunks_follow(self) -> bool:
        return self.streaming and not self.last_chunk


class CausalLayer(StreamingLayer):
    """Base of layers with a temporal window of `time_kernel` frames moved by `time_stride`.

    The very first window is completed by repeating frame 0 (`time_kernel - 1` copies).
    """

    def __init__(self, time_kernel: int, time_stride: int) -> None:
        super().__init__()
        self.time_kernel = time_kernel
        self.time_stride = time_stride
        self._carry: torch.Tensor | None = None  # input frames kept for the next chunk

    def reset_stream(self) -> None:
        self._carry = None

    def _windows(self, x: torch.Tensor) -> torch.Tensor:
        """The input frames spanning every complete window available so far (maybe none)."""
        if self._carry is None:
            head = x[:, :, :1].expand(-1, -1, self.time_kernel - 1, -1, -1)
        else:
            head = self._carry
        frames = torch.cat([head, x], dim=2)
        n = max(0, (frames.shape[2] - self.time_kernel) // self.time_stride + 1)
        if self.more_chunks_follow:
            # A copy, so the whole concatenated chunk is not kept alive until the next call.
            self._carry = frames[:, :, n * self.time_stride :].clone()
        return (
            frames[:, :, : (n - 1) * self.time_stride + self.time_kernel] if n else frames[:, :, :0]
        )

    def _window_op(self, frames: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = self._windows(x)
        if frames.shape[2] == 0:
            # No complete window in this chunk: the output has no frames, but its other
            # dimensions still come from running the layer once on a dummy window.
            dummy = x.new_zeros(*x.shape[:2], self.time_kernel, *x.shape[3:])
            return self._window_op(dummy)[:, :, :0]
        return self._window_op(frames)


class FirstFrameFlag(StreamingLayer):
    """Base of upsampling layers that emit one frame less at the start of the video."""

    def __init__(self) -> None:
        super().__init__()
        self._started = False

    def reset_stream(self) -> None:
        self._started = False

    def _drop_first(self, x: torch.Tensor) -> torch.Tensor:
        if self._started or x.shape[2] == 0:
            return x
        if self.streaming:
            self._started = True
        return x[:, :, 1:]


class TemporalLerp2x(StreamingLayer):
    """2x in time by linear interpolation, as upstream WF-VAE's trilinear upsampling: frame 0
    passes once; frames f_1 .. f_m become F.interpolate(scale 2, align_corners=False) of them,
    i.e. e_j = (f_(j-1) + 3 f_j) / 4 and o_j = (3 f_j + f_(j+1)) / 4, clamped at both ends.

    o_j looks one frame ahead, so in a stream it is held back until the next chunk brings
    f_(j+1) (or the last chunk ends the video): the carry is that one frame, and the output
    of every chunk but the last is one frame short of the full pass, never different."""

    def __init__(self) -> None:
        super().__init__()
        self._started = False
        self._prev: torch.Tensor | None = None  # the last frame seen, its o still owed

    def reset_stream(self) -> None:
        self._started, self._prev = False, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        started, prev = self._started, self._prev
        if not started and x.shape[2] > 0:
            out.append(x[:, :, :1])  # frame 0: not interpolated
            x, started = x[:, :, 1:], True
        if x.shape[2] > 0:
            first = prev is None
            frames = torch.cat([x[:, :, :1] if first else prev, x], dim=2)
            a, b = frames[:, :, :-1], frames[:, :, 1:]
            # (o_(j-1), e_j) from each consecutive pair (f_(j-1), f_j), interleaved.
            pairs = torch.stack((0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b), dim=3).flatten(2, 3)
            out.append(pairs[:, :, 1:] if first else pairs)
            prev = x[:, :, -1:]
        if prev is not None and not self.more_chunks_follow:
            out.append(prev)  # o of the video's last frame: clamped to the frame itself
            prev = None
        if self.streaming:
            self._started, self._prev = started, prev
        return torch.cat(out, dim=2) if out else x


class FrameAligner(StreamingLayer):
    """Pairs two streams of the same frames that arrive with different delays (a path through
    `TemporalLerp2x` runs one frame behind a path that skips it): returns the frames both have
    reached and keeps the leading stream's surplus for the next call."""

    def __init__(self) -> None:
        super().__init__()
        self._surplus: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)

    def reset_stream(self) -> None:
        self._surplus = (None, None)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = (x if s is None else torch.cat([s, x], dim=2) for s, x in zip(self._surplus, (a, b)))
        n = min(a.shape[2], b.shape[2])
        if self.streaming:
            self._surplus = (a[:, :, n:] if a.shape[2] > n else None,
                             b[:, :, n:] if b.shape[2] > n else None)
        elif a.shape[2] != b.shape[2]:
            raise RuntimeError(f"frame counts differ in a full pass: {a.shape[2]} != {b.shape[2]}")
        return a[:, :, :n], b[:, :, :n]


@contextmanager
def causal_stream(module: nn.Module) -> Iterator[None]:
    """Within the block, the streaming layers of `module` carry state from one call to the next."""
    layers = [m for m in module.modules() if isinstance(m, StreamingLayer)]
    for m in layers:
        m.start_stream()
    try:
        yield
    finally:
        for m in layers:
            m.end_stream()


def mark_last_chunk(module: nn.Module) -> None:
    """Tell the streaming layers of `module` that the next call ends the video."""
    for m in module.modules():
        if isinstance(m, StreamingLayer):
            m.last_chunk = True


class CausalConv3d(CausalLayer):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: tuple[int, int, int] = (1, 1, 1),
        spatial_padding: tuple[int, int, int, int] | None = None,  # left, right, top, bottom
    ) -> None:
        super().__init__(time_kernel=kernel_size, time_stride=stride[0])
        # Symmetric spatial padding is the conv's own (no padded copy of the input); an
        # asymmetric one is applied before it.
        pad = kernel_size // 2
        self.spatial_padding = spatial_padding
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=(0, 0, 0) if spatial_padding else (0, pad, pad))

    def _window_op(self, frames: torch.Tensor) -> torch.Tensor:
        if self.spatial_padding:
            frames = F.pad(frames, self.spatial_padding)
        return self.conv(frames)


def to_images(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W). Plain reshapes, since einops rejects T = 0."""
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w)


def to_video(y: torch.Tensor, batch: int) -> torch.Tensor:
    """Inverse of `to_images`."""
    bt, c, h, w = y.shape
    return y.reshape(batch, bt // batch, c, h, w).transpose(1, 2)


class FrameConv2d(nn.Conv2d):
    """A 2D convolution applied to every frame on its own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_video(super().forward(to_images(x)), x.shape[0])


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels at each (frame, pixel): frame-local, so chunking is exact."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.movedim(1, -1), self.weight.shape, self.weight, self.bias, self.eps)
        return y.movedim(-1, 1)


def make_norm(norm_type: NormType, channels: int) -> nn.Module:
    if norm_type == "layernorm":
        return ChannelLayerNorm(channels)
    if norm_type == "groupnorm":
        return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)
    raise ValueError(f"unknown norm_type {norm_type!r}; use 'layernorm' or 'groupnorm'")


class ResnetBlock(nn.Module):
    """norm-SiLU-conv twice plus a (1x1 projected) shortcut; convs are per-frame 2D or causal 3D."""

    def __init__(
        self, in_channels: int, out_channels: int, norm_type: NormType, temporal: bool
    ) -> None:
        super().__init__()

        def conv(cin: int) -> nn.Module:
            if temporal:
                return CausalConv3d(cin, out_channels)
            return FrameConv2d(cin, out_channels, 3, padding=1)

        self.norm1 = make_norm(norm_type, in_channels)
        self.conv1 = conv(in_channels)
        self.norm2 = make_norm(norm_type, out_channels)
        self.conv2 = conv(out_channels)
        self.shortcut = (
            FrameConv2d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = F.silu(self.norm2(h))  # rebound before conv2 runs, so conv1's output is freed
        h = self.conv2(h)
        return self.shortcut(x) + h


class FrameAttention(nn.Module):
    """Single-head self-attention over the pixels of each frame (no mixing across time)."""

    def __init__(self, channels: int, norm_type: NormType) -> None:
        super().__init__()
        self.norm = make_norm(norm_type, channels)
        self.to_qkv = nn.Linear(channels, 3 * channels)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        tokens = to_images(self.norm(x)).flatten(2).transpose(1, 2)  # (B*T, H*W, C)
        q, k, v = self.to_qkv(tokens).chunk(3, dim=-1)
        out = self.to_out(F.scaled_dot_product_attention(q, k, v))
        return x + to_video(out.transpose(1, 2).reshape(b * t, c, h, w), b)


class SpatialDownsample(nn.Module):
    """Per-frame stride-2 conv; pads right/bottom only so the sampling grid starts at pixel 0."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = FrameConv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


def spatial_repeat2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2x in height and width (repeat_interleave also accepts zero frames)."""
    return x.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)


def spatial_bilinear2x(x: torch.Tensor) -> torch.Tensor:
    """Bilinear 2x in height and width per frame (align_corners=False, as upstream's trilinear
    with time scale 1)."""
    return to_video(F.interpolate(to_images(x), scale_factor=2, mode="bilinear"), x.shape[0])


UpsampleMode = Literal["nearest", "trilinear"]


class SpatialUpsample(nn.Module):
    """Nearest 2x per frame, then a 3x3 conv. Frames are made images before upsampling, so the
    one copy that layout needs is of the small tensor."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = F.interpolate(to_images(x), scale_factor=2, mode="nearest")
        return to_video(self.conv(images), x.shape[0])


class SpatioTemporalDownsample(nn.Module):
    """Causal stride-2 conv in time, height and width: 1 + 2n frames -> 1 + n."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = CausalConv3d(
            channels, channels, 3, stride=(2, 2, 2), spatial_padding=(0, 1, 0, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class TemporalRepeat2x(FirstFrameFlag):
    """Each frame twice, the video's first frame once: 1 + n -> 1 + 2n. Looks at one frame
    only, so it streams without holding anything back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._drop_first(x.repeat_interleave(2, dim=2))


class SpatioTemporalUpsample(nn.Module):
    """Causal 2x in time (1 + n -> 1 + 2n frames) and 2x in space, then a causal conv.

    "nearest" repeats frames and pixels; "trilinear" interpolates linearly in time
    (`TemporalLerp2x`) and bilinearly in space, as upstream WF-VAE's released configs. Both
    decode losslessly in chunks."""

    def __init__(self, channels: int, mode: UpsampleMode = "nearest") -> None:
        super().__init__()
        if mode not in ("nearest", "trilinear"):
            raise ValueError(f"unknown upsampling {mode!r}; use 'nearest' or 'trilinear'")
        self.time = TemporalRepeat2x() if mode == "nearest" else TemporalLerp2x()
        self.space = spatial_repeat2x if mode == "nearest" else spatial_bilinear2x
        self.conv = CausalConv3d(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.space(self.time(x)))


def haar_filters(dims: int) -> torch.Tensor:
    """The 2**dims Haar filters of size 2 x ... x 2 with taps +-1, all-lowpass first.

    Shape (2**dims, 1, 2, ..., 2); filter k is the outer product of per-axis low [1, 1] or high
    [1, -1] taps, the first axis (time for 3D) varying slowest. Times `haar_scale(dims)` they
    are orthonormal; the scale is applied separately so the taps are exact in any dtype (and
    the layers cast them to the input's dtype, so they work in any precision).
    """
    low = torch.tensor([1.0, 1.0])
    high = torch.tensor([1.0, -1.0])
    filters = []
    for taps in itertools.product((low, high), repeat=dims):
        f = taps[0]
        for tap in taps[1:]:
            f = torch.tensordot(f, tap, dims=0)
        filters.append(f)
    return torch.stack(filters).unsqueeze(1)


def haar_scale(dims: int) -> float:
    return 2.0 ** (-dims / 2)


HAAR3D_TAP = haar_scale(3)  # orthonormal; upstream WF-VAE rounds it to 0.3536


class HaarWavelet3D(CausalLayer):
    """One level of the 3D Haar transform as a fixed causal conv: (C, 1+2n, H, W) -> (8C, 1+n, H/2, W/2).

    Output channels are grouped by subband: [:C] is the low-low-low band of the C inputs.
    `tap` is the magnitude of every filter tap (orthonormal: 2**-1.5).
    """

    def __init__(self, tap: float = HAAR3D_TAP) -> None:
        super().__init__(time_kernel=2, time_stride=2)
        self.tap = tap
        self.register_buffer("filters", haar_filters(3), persistent=False)

    def _window_op(self, frames: torch.Tensor) -> torch.Tensor:
        b = frames.shape[0]
        y = F.conv3d(
            rearrange(frames, "b c t h w -> (b c) 1 t h w"), self.filters.to(frames.dtype), stride=2
        ) * self.tap
        return rearrange(y, "(b c) k t h w -> b (k c) t h w", b=b)


class InverseHaarWavelet3D(FirstFrameFlag):
    """Exact inverse of HaarWavelet3D: each coefficient frame gives back two frames, and the
    first frame of the video (which the forward transform paired with a copy of itself) once.
    With a `tap` other than 2**-1.5 (upstream's rounded one) it is the transpose, as upstream."""

    def __init__(self, tap: float = HAAR3D_TAP) -> None:
        super().__init__()
        self.tap = tap
        self.register_buffer("filters", haar_filters(3), persistent=False)

    def forward(self, coeffs: torch.Tensor) -> torch.Tensor:
        b = coeffs.shape[0]
        y = rearrange(coeffs, "b (k c) t h w -> (b c) k t h w", k=8)
        y = F.conv_transpose3d(y, self.filters.to(y.dtype), stride=2) * self.tap
        return self._drop_first(rearrange(y, "(b c) 1 t h w -> b c t h w", b=b))


class HaarWavelet2D(nn.Module):
    """One level of the per-frame 2D Haar transform: (C, T, H, W) -> (4C, T, H/2, W/2)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("filters", haar_filters(2), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        y = F.conv2d(
            to_images(x).flatten(0, 1).unsqueeze(1), self.filters.to(x.dtype), stride=2
        ) * haar_scale(2)
        y = (
            y.reshape(-1, c, 4, *y.shape[2:]).transpose(1, 2).flatten(1, 2)
        )  # subband-major channels
        return to_video(y, b)


class InverseHaarWavelet2D(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("filters", haar_filters(2), persistent=False)

    def forward(self, coeffs: torch.Tensor) -> torch.Tensor:
        b, kc = coeffs.shape[:2]
        y = to_images(coeffs)
        y = (
            y.reshape(y.shape[0], 4, kc // 4, *y.shape[2:]).transpose(1, 2).flatten(0, 1)
        )  # (B*T*C, 4, h, w)
        y = F.conv_transpose2d(y, self.filters.to(y.dtype), stride=2) * haar_scale(2)
        return to_video(y.reshape(-1, kc // 4, *y.shape[2:]), b)
