"""Densities fitted on ID statistics, kept as plain tensors (safetensors, no pickle): a Gaussian mixture on
standardised vectors (its size chosen by BIC), a Gaussian kernel density in one dimension, and a single
Gaussian with a shrunk or diagonal covariance. Each gives log densities or distances, higher = more typical
or more OOD as named, in float64."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

MIXTURE_SIZES = (1, 2, 4, 8, 16, 32)  # components tried; BIC picks one


@dataclass
class Mixture:
    """A Gaussian mixture with full covariances on (x - center) / scale."""

    center: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, D)
    covariances: np.ndarray  # (K, D, D)

    def log_density(self, x: np.ndarray) -> np.ndarray:
        """log p(x) per row of x (N, D), including the standardisation's Jacobian."""
        z = (np.asarray(x, dtype=np.float64) - self.center) / self.scale
        per = [np.log(w) + multivariate_normal(m, c).logpdf(z).reshape(len(z))
               for w, m, c in zip(self.weights, self.means, self.covariances)]
        return logsumexp(np.stack(per), axis=0) - np.log(self.scale).sum()

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return {prefix + k: torch.as_tensor(getattr(self, k)) for k in ("center", "scale", "weights", "means", "covariances")}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], prefix: str = "") -> "Mixture":
        return cls(*(t[prefix + k].double().numpy() for k in ("center", "scale", "weights", "means", "covariances")))


def fit_mixture(x: np.ndarray, seed: int = 0, sizes=MIXTURE_SIZES) -> Mixture:
    """A Gaussian mixture on standardised x (N, D): the size of `sizes` with the lowest BIC (at most one
    component per 10 points), k-means initialised from `seed`, so the fit is the same for the same x and seed."""
    from sklearn.mixture import GaussianMixture

    x = np.asarray(x, dtype=np.float64)
    center, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    z = (x - center) / scale
    best = None
    for k in [k for k in sizes if k <= max(1, len(x) // 10)]:
        gm = GaussianMixture(k, covariance_type="full", reg_covar=1e-6, random_state=seed, n_init=1, max_iter=500)
        gm.fit(z)
        bic = gm.bic(z)
        if best is None or bic < best[0]:
            best = (bic, gm)
    gm = best[1]
    return Mixture(center, scale, gm.weights_, gm.means_, gm.covariances_)


@dataclass
class Kernel:
    """A Gaussian kernel density in one dimension over `points`, with `bandwidth`."""

    points: np.ndarray  # (N,)
    bandwidth: float

    def log_density(self, x: np.ndarray) -> np.ndarray:
        from sklearn.neighbors import KernelDensity

        kde = KernelDensity(bandwidth=self.bandwidth).fit(self.points[:, None])
        return kde.score_samples(np.asarray(x, dtype=np.float64).reshape(-1, 1))

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return {prefix + "points": torch.as_tensor(self.points), prefix + "bandwidth": torch.tensor([self.bandwidth])}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], prefix: str = "") -> "Kernel":
        return cls(t[prefix + "points"].double().numpy(), float(t[prefix + "bandwidth"][0]))


def fit_kernel(x: np.ndarray) -> Kernel:
    """A kernel density with Silverman's bandwidth: 0.9 min(std, IQR / 1.34) N^(-1/5)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    iqr = np.subtract(*np.percentile(x, [75, 25]))
    spread = min(x.std(), iqr / 1.34) if iqr > 0 else x.std()
    return Kernel(x, float(0.9 * (spread or 1.0) * len(x) ** -0.2))


@dataclass
class Gaussian:
    """One Gaussian: its mean and precision (inverse covariance) matrix."""

    mean: np.ndarray  # (D,)
    precision: np.ndarray  # (D, D)

    def mahalanobis(self, x: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each row of x (N, D) to the mean."""
        d = np.asarray(x, dtype=np.float64) - self.mean
        return np.einsum("nd,de,ne->n", d, self.precision, d)

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return {prefix + "mean": torch.as_tensor(self.mean), prefix + "precision": torch.as_tensor(self.precision)}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], prefix: str = "") -> "Gaussian":
        return cls(t[prefix + "mean"].double().numpy(), t[prefix + "precision"].double().numpy())


COVARIANCES = ("ledoit-wolf", "diagonal")


def fit_gaussian(x: np.ndarray, covariance: str = "ledoit-wolf") -> Gaussian:
    """A Gaussian on x (N, D): Ledoit-Wolf's shrunk covariance (scikit-learn), or the per-dimension variances."""
    x = np.asarray(x, dtype=np.float64)
    if covariance == "ledoit-wolf":
        from sklearn.covariance import LedoitWolf

        lw = LedoitWolf().fit(x)
        return Gaussian(lw.location_, lw.precision_)
    if covariance == "diagonal":
        var = x.var(0) + 1e-8 * max(float(x.var(0).mean()), 1e-12)
        return Gaussian(x.mean(0), np.diag(1 / var))
    raise ValueError(f"unknown covariance {covariance!r}; choose one of {list(COVARIANCES)}")
