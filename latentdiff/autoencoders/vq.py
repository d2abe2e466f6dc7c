"""Vector quantiser with an EMA codebook, commitment loss and dead-code restarts.

* Quantisation (van den Oord et al. 2017, eq. 1-3): each latent vector z_e goes to its nearest
  code e_k; the decoder sees z_q = z_e + sg(e_k - z_e), so the forward value is e_k and the
  gradient passes straight through to the encoder. The encoder is pulled towards its codes by
  the commitment loss beta * ||z_e - sg(e_k)||^2.
* The codebook is not learned by gradient but as an exponential moving average of the vectors
  assigned to each code (van den Oord et al. 2017, appendix A.1; Razavi et al. 2019):
      N_k <- gamma N_k + (1 - gamma) n_k,     m_k <- gamma m_k + (1 - gamma) sum_{i in k} z_e,i,
      e_k = m_k / N~_k,  with N~ the Laplace-smoothed counts.
* Dead-code restarts (Dhariwal et al. 2020, Jukebox, section 2.2; Zeghidour et al. 2021): a code
  whose EMA count falls below ``restart_threshold`` is moved onto a random encoder output of the
  current batch, so the whole codebook stays in use.

Under ``torch.distributed`` the counts and sums are all-reduced and restarts broadcast from rank
0, so every rank holds the same codebook.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def _broadcast(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(t, 0)
    return t


class VectorQuantizer(nn.Module):
    """``forward(z_e (B, D, h, w)) -> (z_q (B, D, h, w), commitment loss (), codes (B, h, w))``.

    Args:
        num_codes: codebook size K.
        dim: code dimension D (the encoder's latent channels).
        beta: commitment-loss weight (0.25 in van den Oord et al. 2017).
        decay: EMA decay gamma of the codebook statistics.
        restart_threshold: EMA count below which a code is restarted (0 disables restarts).
    """

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25, decay: float = 0.99,
                 restart_threshold: float = 1.0, eps: float = 1e-5):
        super().__init__()
        self.num_codes, self.dim, self.beta, self.decay = num_codes, dim, beta, decay
        self.restart_threshold, self.eps = restart_threshold, eps
        codebook = torch.randn(num_codes, dim)
        self.register_buffer("codebook", codebook)
        self.register_buffer("cluster_size", torch.ones(num_codes))
        self.register_buffer("embed_sum", codebook.clone())
        # assignments on this process since reset_usage(): an evaluation statistic, not saved
        self.register_buffer("usage", torch.zeros(num_codes), persistent=False)

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """(N, D) vectors -> (N,) indices of their nearest codes (squared Euclidean distance)."""
        d = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.t()
             + self.codebook.pow(2).sum(1)[None])
        return d.argmin(dim=1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) indices -> (B, D, h, w) code vectors."""
        return self.codebook[codes].permute(0, 3, 1, 2).contiguous()

    def forward(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, D, h, w = z_e.shape
        z_e = z_e.float()
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, D)
        codes = self.nearest(flat.detach())
        if self.training:
            self.ema_update(flat.detach(), codes)
        with torch.no_grad():
            self.usage += torch.bincount(codes, minlength=self.num_codes).float()
        z_q = self.lookup(codes.view(B, h, w))
        commitment = self.beta * F.mse_loss(z_e, z_q.detach())
        z_q = z_e + (z_q - z_e).detach()  # straight-through estimator
        return z_q, commitment, codes.view(B, h, w)

    @torch.no_grad()
    def ema_update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        """One EMA step of counts, sums and codes from (N, D) vectors and their (N,) codes."""
        one_hot = F.one_hot(codes, self.num_codes).type(flat.dtype)
        n = _all_reduce(one_hot.sum(0))
        sums = _all_reduce(one_hot.t() @ flat)
        self.cluster_size.mul_(self.decay).add_(n, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.num_codes * self.eps) * total
        self.codebook.copy_(self.embed_sum / smoothed[:, None])
        self.restart_dead_codes(flat)

    @torch.no_grad()
    def restart_dead_codes(self, flat: torch.Tensor) -> int:
        """Move codes with EMA count < threshold onto random vectors of ``flat``; returns how many."""
        if self.restart_threshold <= 0:
            return 0
        dead = self.cluster_size < self.restart_threshold
        n_dead = int(dead.sum())
        if n_dead == 0:
            return 0
        pick = torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)
        new = _broadcast(flat[pick].contiguous())
        self.codebook[dead] = new
        self.embed_sum[dead] = new * self.restart_threshold
        self.cluster_size[dead] = self.restart_threshold
        return n_dead

    def reset_usage(self) -> None:
        self.usage.zero_()

    def fraction_used(self) -> float:
        """Fraction of codes assigned at least once since :meth:`reset_usage`."""
        return float((self.usage > 0).float().mean())
