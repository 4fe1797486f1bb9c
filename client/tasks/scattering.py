"""A fixed wavelet scattering front end (Mallat 2012; Bruna & Mallat 2013) for image tasks.

Why: under DP-SGD every trained parameter pays in noise, and a client with a few hundred
examples cannot afford to learn its own low-level features. Tramèr & Boneh 2021
("Differentially Private Learning Needs Better Features (or Much More Data)", ICLR) show that
a linear model on ScatterNet features beats end-to-end CNNs under DP on MNIST. The transform
has no parameters and depends on no data, so it costs no privacy and nothing of it travels:
its filters are non-persistent buffers, absent from the ``state_dict`` that is exchanged.

The filter bank and the transform follow Kymatio's ``Scattering2D`` (Andreux et al. 2020,
BSD-3-Clause) step for step — Morlet wavelets at ``J`` scales and ``L`` angles, reflect
padding, products and subsampling in the Fourier domain — so that the features equal the
ones that paper used. Kymatio itself is not a dependency: its last release (0.3.0) cannot
import its PyTorch front end with SciPy 1.17 (``scipy.special.sph_harm`` was removed).
Output for a ``(B, C, H, W)`` batch: ``(B, C·K, ⌊H / 2^J⌋, ⌊W / 2^J⌋)`` — 7×7 for 28×28 at
J = 2 — with ``K = 1 + J·L + L²·J(J−1)/2`` channels per input channel (81 for J = 2, L = 8).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from federator import TaskError

_Real = npt.NDArray[np.float32]
_Complex = npt.NDArray[np.complex64]


def scattering_channels(*, j: int, angles: int) -> int:
    """How many coefficients per input channel a second-order scattering gives."""
    return 1 + j * angles + angles * angles * j * (j - 1) // 2


def _gabor(m: int, n: int, *, sigma: float, theta: float, xi: float, slant: float) -> _Complex:
    """A 2-D Gabor filter in space, periodised over 5×5 copies of the ``m × n`` grid."""
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]], np.float32)
    rot_inv = np.array(
        [[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]], np.float32
    )
    curv = rot @ np.diag([1.0, slant * slant]) @ rot_inv / (2 * sigma * sigma)
    gab = np.zeros((m, n), np.complex64)
    for ex in range(-2, 3):
        for ey in range(-2, 3):
            xx, yy = np.mgrid[ex * m : m + ex * m, ey * n : n + ey * n]
            arg = -(
                curv[0, 0] * xx * xx + (curv[0, 1] + curv[1, 0]) * xx * yy + curv[1, 1] * yy * yy
            ) + 1j * (xx * xi * np.cos(theta) + yy * xi * np.sin(theta))
            gab += np.exp(arg)
    return gab / (2 * 3.1415 * sigma * sigma / slant)  # Kymatio's constant, kept for equality


def _morlet(m: int, n: int, *, sigma: float, theta: float, xi: float, slant: float) -> _Complex:
    """A Gabor filter minus its envelope scaled so that the sum is exactly zero."""
    wave = _gabor(m, n, sigma=sigma, theta=theta, xi=xi, slant=slant)
    envelope = _gabor(m, n, sigma=sigma, theta=theta, xi=0.0, slant=slant)
    zero_mean: _Complex = wave - (wave.sum() / envelope.sum()) * envelope
    return zero_mean


def _fourier(signal: _Complex) -> _Real:
    return np.real(np.fft.fft2(signal)).astype(np.float32)


def _periodise(filt: _Real, res: int) -> _Real:
    """The filter at resolution ``2^-res``: high frequencies cut, then folded (aliased)."""
    m, n = filt.shape
    k = 2**res
    masked = filt.copy()
    top, height = int(m / 2 / k), int(m * (1 - 1 / k))
    left, width = int(n / 2 / k), int(n * (1 - 1 / k))
    masked[top : top + height, :] = 0
    masked[:, left : left + width] = 0
    folded: _Real = masked.reshape(k, m // k, k, n // k).sum(axis=(0, 2)).astype(np.float32)
    return folded


def _subsample(x: torch.Tensor, k: int) -> torch.Tensor:
    """Subsample by ``k`` in space, done in Fourier as a periodisation."""
    if k == 1:
        return x
    *lead, m, n = x.shape
    return x.reshape(*lead, k, m // k, k, n // k).mean(-2).mean(-3)


class Scattering2d(nn.Module):
    """Second-order 2-D wavelet scattering of images of a fixed ``shape``; no parameters.

    A front end: it runs without autograd, so nothing before it can be trained through it.
    """

    def __init__(self, shape: tuple[int, int], *, j: int = 2, angles: int = 8) -> None:
        super().__init__()
        height, width = shape
        if j < 1 or angles < 1:
            raise TaskError(f"scattering needs J ≥ 1 and L ≥ 1 angles; got J={j}, L={angles}")
        self.shape, self.j, self.angles = (height, width), j, angles
        # Kymatio's padding: to the next multiple of 2^J beyond size + 2^J, reflected.
        mp = ((height + 2**j) // 2**j + 1) * 2**j
        np_ = ((width + 2**j) // 2**j + 1) * 2**j
        top, left = (mp - height) // 2, (np_ - width) // 2
        if top >= height or left >= width:
            raise TaskError(f"image {height}×{width} is too small for J = {j}")
        self.pad = nn.ReflectionPad2d((left, np_ - width - left, top, mp - height - top))
        phi = _fourier(_gabor(mp, np_, sigma=0.8 * 2 ** (j - 1), theta=0.0, xi=0.0, slant=1.0))
        for res in range(j):
            self.register_buffer(
                f"phi{res}", torch.from_numpy(_periodise(phi, res)), persistent=False
            )
        for scale in range(j):
            waves = [
                _fourier(
                    _morlet(
                        mp,
                        np_,
                        sigma=0.8 * 2**scale,
                        theta=(int(angles - angles / 2 - 1) - theta) * np.pi / angles,
                        xi=3.0 / 4.0 * np.pi / 2**scale,
                        slant=4.0 / angles,
                    )
                )
                for theta in range(angles)
            ]
            for res in range(min(scale + 1, max(j - 1, 1))):
                stack = np.stack([_periodise(w, res) for w in waves])
                self.register_buffer(f"psi{scale}_{res}", torch.from_numpy(stack), persistent=False)

    def _lowpass(self, spectrum: torch.Tensor, scale: int) -> torch.Tensor:
        """Average at 2^J (the signal is at resolution 2^-scale): real, border cut off."""
        out = _subsample(spectrum * self.get_buffer(f"phi{scale}"), 2 ** (self.j - scale))
        real: torch.Tensor = torch.fft.ifft2(out).real
        return real[..., 1:-1, 1:-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[-2:]) != self.shape:
            raise TaskError(f"scattering expects (batch, channels, {self.shape}); got {x.shape}")
        batch, channels = x.shape[:2]
        with torch.no_grad():
            u0 = torch.fft.fft2(self.pad(x.reshape(batch * channels, 1, *self.shape))[:, 0])
            order0 = [self._lowpass(u0, 0)[:, None]]
            order1, order2 = [], []
            for j1 in range(self.j):  # (N, L, m, n) per scale: all angles at once
                u1 = _subsample(u0[:, None] * self.get_buffer(f"psi{j1}_0"), 2**j1)
                u1 = torch.fft.fft2(torch.fft.ifft2(u1).abs().to(u1.dtype))
                order1.append(self._lowpass(u1, j1))
                paths = []
                for j2 in range(j1 + 1, self.j):  # (N, L1, L2, m, n)
                    u2 = _subsample(
                        u1[:, :, None] * self.get_buffer(f"psi{j2}_{j1}"), 2 ** (j2 - j1)
                    )
                    u2 = torch.fft.fft2(torch.fft.ifft2(u2).abs().to(u2.dtype))
                    paths.append(self._lowpass(u2, j2))
                if paths:  # Kymatio's order: first angle, then second scale, second angle
                    order2.append(torch.cat(paths, dim=2).flatten(1, 2))
            out = torch.cat(order0 + order1 + order2, dim=1)
        return out.reshape(batch, -1, *out.shape[-2:])
