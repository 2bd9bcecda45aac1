"""The curvature of a loss: Hessian-vector products over a data set, the top eigenvalues
(Lanczos), the trace (Hutchinson) and the eigenvalue density (stochastic Lanczos quadrature).

The Hessian is that of the mean loss over all the images with respect to every trainable
parameter, with the model in eval mode (BatchNorm uses its running statistics), as PyHessian
computes it (Yao, Gholami, Keutzer & Mahoney 2020). Vectors are flat float32 tensors, one entry
per parameter; every random draw comes from a ``torch.Generator``, so one seed gives the same
numbers on one machine.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

MatVec = Callable[[torch.Tensor], torch.Tensor]
INVARIANT = 1e-6  # a Lanczos residual this small against the largest entry of T: restart
MIN_PROBES = 10  # Hutchinson probes before the standard error may stop the estimate
ROUNDING = float(np.finfo(np.float32).eps)  # the products' own relative rounding


class EvalBatchNorm(nn.Module):
    """An eval-mode BatchNorm as ``x * scale + shift`` over the same parameters and buffers:
    the same function and Hessian, and a double backward far cheaper than BatchNorm's own."""

    def __init__(self, bn: _BatchNorm) -> None:
        super().__init__()
        self.bn = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        assert bn.running_var is not None and bn.running_mean is not None
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return torch.addcmul(shift.view(shape), x, scale.view(shape))


def eval_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm that keeps running statistics replaced, in place, by
    :class:`EvalBatchNorm` (the parameters keep their order)."""
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm) and child.running_var is not None:
            setattr(module, name, EvalBatchNorm(child))
        else:
            eval_batchnorm(child)
    return module


class LossHessian:
    """Hessian-vector products of the mean loss of ``model`` over ``(x, y)``.

    The images go through in chunks of ``batch``; with ``cache`` the gradient graph of every
    chunk is built once and each product is one backward pass through it (memory grows with
    the images: about 5 MB per 32×32 image for ResNet-20), else each product recomputes it.
    ``channels_last`` runs 4-D inputs in that layout (faster convolutions on most CPUs).
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        batch: int = 256,
        cache: bool = True,
        channels_last: bool = False,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    ) -> None:
        self.model = eval_batchnorm(copy.deepcopy(model).eval())
        if channels_last and x.dim() == 4:
            self.model = self.model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.shapes = [p.shape for p in self.params]
        self.dim = sum(p.numel() for p in self.params)
        self.chunks = list(zip(x.split(batch), y.split(batch), strict=True))
        self.images, self.loss_fn, self.cache = len(x), loss, cache
        self.products = 0  # Hessian-vector products taken
        self.loss = math.nan  # the mean loss over the images, once a gradient is taken
        self._graphs: list[list[torch.Tensor]] | None = None

    def _gradient(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[torch.Tensor], float]:
        """This chunk's share of the gradient of the mean loss, with its graph."""
        with torch.enable_grad():
            loss = self.loss_fn(self.model(x), y) * (len(x) / self.images)
            grads = torch.autograd.grad(loss, self.params, create_graph=True)
        return list(grads), float(loss.detach())

    def build(self) -> list[list[torch.Tensor]]:
        """Every chunk's gradient with its graph (with ``cache``: built once, else at the
        first product)."""
        if self._graphs is None:
            found = [self._gradient(x, y) for x, y in self.chunks]
            self._graphs = [g for g, _ in found]
            self.loss = sum(value for _, value in found)
        return self._graphs

    def vectors(self, v: torch.Tensor) -> list[torch.Tensor]:
        """A flat vector as one tensor per parameter (views)."""
        return [
            part.view(shape)
            for part, shape in zip(
                v.split([math.prod(s) for s in self.shapes]), self.shapes, strict=True
            )
        ]

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """H v, flat."""
        parts = self.vectors(v.to(torch.float32))
        out = torch.zeros(self.dim, dtype=torch.float32)
        loss = 0.0
        for index, (x, y) in enumerate(self.chunks):
            if self.cache:
                grads = self.build()[index]
            else:
                grads, value = self._gradient(x, y)
                loss += value
            with torch.enable_grad():
                found = torch.autograd.grad(
                    grads, self.params, parts, retain_graph=self.cache, allow_unused=True
                )
            out += torch.cat(
                [
                    (h if h is not None else torch.zeros(s)).reshape(-1)
                    for h, s in zip(found, self.shapes, strict=True)
                ]
            )
        if not self.cache:
            self.loss = loss
        self.products += 1
        return out

    def release(self) -> None:
        """Free the cached gradient graphs."""
        self._graphs = None


@dataclass
class Lanczos:
    """A Lanczos run: the tridiagonal ``T`` (``alphas`` on the diagonal, ``betas`` beside it;
    a zero beta marks a restart in a new direction), the orthonormal basis (one row per step)
    and ``betas[-1]``, the norm of the residual that the next step would normalise."""

    alphas: list[float]
    betas: list[float]
    basis: torch.Tensor
    converged_at: int | None = None  # the step at which the top-k first met the tolerance
    restarts: list[int] = field(default_factory=list)

    @property
    def steps(self) -> int:
        """Steps taken: one Hessian-vector product each."""
        return len(self.alphas)

    def tridiagonal(self) -> np.ndarray:
        """``T = QᵀHQ``, in float64."""
        off = np.array(self.betas[:-1])
        return np.diag(self.alphas) + np.diag(off, 1) + np.diag(off, -1)

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """Ritz values (ascending) and the eigenvectors of ``T``, columns."""
        return np.linalg.eigh(self.tridiagonal())

    def bounds(self) -> np.ndarray:
        """A bound on each Ritz value's distance to an eigenvalue: ``min(r, r²/gap)``, with
        ``r = |β s_last|`` the Ritz pair's residual norm and ``gap`` the distance to the nearest
        other Ritz value (Parlett, The Symmetric Eigenvalue Problem, §11.7); never below the
        float32 rounding of the products, relative to the largest Ritz value."""
        values, vectors = self.ritz()
        residual = abs(self.betas[-1] * vectors[-1])
        floor = ROUNDING * float(np.abs(values).max())
        if len(values) == 1:
            return np.maximum(residual, floor)
        gaps = np.abs(values[:, None] - values[None, :]) + np.diag(np.full(len(values), np.inf))
        gap = gaps.min(axis=1)
        gapped = np.where(gap > 0, residual**2 / np.maximum(gap, 1e-300), residual)
        return np.maximum(np.minimum(residual, gapped), floor)

    def top(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` largest Ritz values (descending) and their error bounds."""
        values, _ = self.ritz()
        order = np.argsort(values)[::-1][:k]
        return values[order], self.bounds()[order]

    def vectors(self, k: int) -> torch.Tensor:
        """The Ritz vectors of the ``k`` largest Ritz values, rows, in the full space."""
        values, vectors = self.ritz()
        order = np.argsort(values)[::-1][:k]
        rows = torch.from_numpy(vectors[:, order].T.copy()).to(self.basis.dtype)
        return rows @ self.basis[: self.steps]

    def quadrature(self) -> tuple[np.ndarray, np.ndarray]:
        """Nodes and weights of the Gauss quadrature of the start vector's spectral measure:
        the Ritz values and the squared first entries of T's eigenvectors (they sum to 1)."""
        values, vectors = self.ritz()
        return values, vectors[0] ** 2


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """The inner product, accumulated in float64."""
    return float(torch.dot(a.double(), b.double()))


def _orthogonalise(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``w`` less its part in the rows of ``basis``, twice (classical Gram-Schmidt, repeated)."""
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


def converged(run: Lanczos, k: int, tol: float) -> bool:
    """Whether the ``k`` largest Ritz values are within ``tol`` (relative) of eigenvalues."""
    if run.steps < k:
        return False
    values, bounds = run.top(k)
    return bool(np.all(bounds <= tol * np.maximum(np.abs(values), 1e-30)))


def lanczos(
    matvec: MatVec,
    dim: int,
    steps: int,
    *,
    generator: torch.Generator,
    k: int = 0,
    tol: float = 0.0,
    min_steps: int = 0,
    start: torch.Tensor | None = None,
) -> Lanczos:
    """Lanczos with full reorthogonalisation from ``start`` (default: a Gaussian draw, the
    sphere's uniform direction SLQ wants). Stops after ``steps`` steps, at an invariant
    subspace of the whole space, or, with ``k``, once ``min_steps`` are taken and the ``k``
    largest Ritz values meet ``tol`` (:func:`converged`, checked at every step)."""
    steps = min(steps, dim)
    basis = torch.empty(steps, dim)  # pages are touched only as rows are written
    q = start.to(torch.float32) if start is not None else torch.randn(dim, generator=generator)
    q = q / q.norm()
    run = Lanczos([], [], basis)
    for j in range(steps):
        basis[j] = q
        w = matvec(q)
        alpha = _dot(w, q)
        w = w - alpha * q - (run.betas[-1] * basis[j - 1] if j else 0.0)
        w = _orthogonalise(w, basis[: j + 1])
        beta = float(w.norm())
        run.alphas.append(alpha)
        run.betas.append(beta)
        if k and run.converged_at is None and converged(run, k, tol):
            run.converged_at = j + 1
        if (k and run.converged_at is not None and j + 1 >= min_steps) or j + 1 == steps:
            break
        if beta <= INVARIANT * max(abs(a) for a in run.alphas + run.betas[:-1] + [beta, 1e-30]):
            run.betas[-1] = 0.0  # an invariant subspace: go on in a new direction
            run.restarts.append(j + 1)
            w = _orthogonalise(torch.randn(dim, generator=generator), basis[: j + 1])
            beta = float(w.norm())
        q = w / beta
    run.basis = basis[: run.steps].clone()
    return run


@dataclass
class Eigenvalues:
    """The top eigenvalues (descending), their error bounds and eigenvectors (rows), whether
    all met the tolerance, and the Lanczos run they came from."""

    values: list[float]
    bounds: list[float]
    vectors: torch.Tensor
    converged: bool
    run: Lanczos


def top_eigenvalues(
    matvec: MatVec,
    dim: int,
    k: int = 1,
    *,
    tol: float = 1e-3,
    max_steps: int = 100,
    seed: int = 0,
    min_steps: int = 0,
) -> Eigenvalues:
    """The ``k`` largest (algebraic) eigenvalues by Lanczos, stopped once each one's error
    bound is below ``tol`` times its size, or after ``max_steps`` products. PyHessian's power
    iteration finds the largest in magnitude instead: the same for a trained net's Hessian,
    whose top eigenvalue is far above its most negative one."""
    generator = torch.Generator().manual_seed(seed)
    run = lanczos(matvec, dim, max_steps, generator=generator, k=k, tol=tol, min_steps=min_steps)
    values, bounds = run.top(k)
    return Eigenvalues(
        [float(v) for v in values],
        [float(b) for b in bounds],
        run.vectors(k),
        run.converged_at is not None,
        run,
    )


@dataclass
class Trace:
    """A trace estimate: ``mean`` ± ``se`` (its standard error) after ``probes`` probes;
    ``exact`` is the part computed exactly on a deflation basis (0 without one)."""

    mean: float
    se: float
    probes: int
    exact: float = 0.0
    samples: list[float] = field(default_factory=list)


def rademacher(dim: int, generator: torch.Generator) -> torch.Tensor:
    """A vector of independent ±1 entries."""
    return torch.randint(0, 2, (dim,), generator=generator).to(torch.float32).mul_(2).sub_(1)


def hutchinson_trace(
    matvec: MatVec,
    dim: int,
    *,
    probes: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    deflate: Lanczos | None = None,
) -> Trace:
    """Hutchinson's estimate of the trace, ``E[zᵀHz]`` over Rademacher ``z``; it stops once the
    standard error of the mean is below ``tol`` times the estimate (after at least
    ``MIN_PROBES``) or after ``probes`` products.

    With ``deflate``, a Lanczos run's orthonormal basis ``Q``: ``tr H = tr(QᵀHQ) + tr(PHP)``
    with ``P = I - QQᵀ``; the first term is the sum of the run's alphas (exact), the second is
    estimated with ``Pz``. The top eigen-directions, which carry most of the variance of a
    trained net's estimate, are then no longer sampled (a Hutch++-style deflation).
    """
    generator = torch.Generator().manual_seed(seed)
    basis = deflate.basis if deflate is not None else None
    exact = float(sum(deflate.alphas)) if deflate is not None else 0.0
    samples: list[float] = []
    mean = se = math.nan
    for _ in range(probes):
        z = rademacher(dim, generator)
        if basis is not None and len(basis):
            z = z - basis.T @ (basis @ z)
        samples.append(_dot(z, matvec(z)))
        n = len(samples)
        mean = exact + float(np.mean(samples))
        se = float(np.std(samples, ddof=1) / math.sqrt(n)) if n > 1 else math.inf
        if n >= min(MIN_PROBES, probes) and se <= tol * abs(mean):
            break
    return Trace(mean, se, len(samples), exact, samples)


def eigenvalue_density(
    nodes: Sequence[Sequence[float]],
    weights: Sequence[Sequence[float]],
    *,
    points: int = 2000,
    sigma_squared: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray]:
    """The eigenvalue density of stochastic Lanczos quadrature (Ghorbani, Krishnan & Xiao 2019;
    PyHessian's ``density``): each run's nodes broadened by Gaussians of variance
    ``sigma_squared · max(1, λmax - λmin)``, weighted and averaged over the runs.

    The grid spans the nodes and five widths beyond; each value is the Gaussians' mass in its
    cell over the cell's width, so the density integrates to the weights' mean sum (1) at any
    resolution. Returns (grid, density).
    """
    low = min(min(n) for n in nodes)
    high = max(max(n) for n in nodes)
    sigma = math.sqrt(sigma_squared * max(1.0, high - low))
    grid = np.linspace(low - 5 * sigma, high + 5 * sigma, points)
    step = grid[1] - grid[0]
    edges = torch.from_numpy(np.append(grid - step / 2, grid[-1] + step / 2))
    values = torch.zeros(points, dtype=torch.float64)
    for run_nodes, run_weights in zip(nodes, weights, strict=True):
        theta = torch.tensor(list(run_nodes), dtype=torch.float64)[:, None]
        tau = torch.tensor(list(run_weights), dtype=torch.float64)[:, None]
        mass = torch.special.ndtr((edges[None, :] - theta) / sigma)
        values += (tau * (mass[:, 1:] - mass[:, :-1])).sum(0) / step
    return grid, (values / len(nodes)).numpy()
