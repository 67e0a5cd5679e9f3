"""Calibration-based rounding of one weight: GPTQ (Frantar et al., 2023), pure torch.

A weight W (rows, n) seen by inputs X (N, n) gives the layer output X W^T. Round-to-nearest
(RTN) minimises each weight's own error; GPTQ minimises the output error ||X W^T - X Q^T||^2
by rounding one input column at a time and spreading its rounding error over the columns not
yet rounded, weighted by the inverse Hessian H^-1 (H = X^T X, the same for every row):

    for column j (in order, or by decreasing H_jj with act_order):
        q_j   = quantize(w_j)                         # with the group's fixed qparams
        e_j   = (w_j - q_j) / U_jj                    # U = upper Cholesky factor of H^-1
        w_k  -= e_j * U_jk        for every k > j     # error compensation

Quantization parameters are by default "static groups": chosen once per group from the
unmodified weight (RTN range, mse clip, or the output-aware clip search with the same Hessian)
before any column is rounded. With static_groups=False (GPTQ's original rule) a group's
qparams are chosen when its first column is reached, from the group's weights as the error
compensation has left them by then; with act_order the group keeps our contiguous layout
(its columns are those of the unpermuted weight). Either way the codes are ordinary codes on
the grid of `QuantSpec`: export and packed loading need no change. H is damped,
H + damp * mean(diag H) * I, and inputs that are never active (H_jj = 0) get H_jj = 1 and
their weights set to 0 (they multiply zeros). A Hessian of shape (rows, n, n) gives each row
its own (a depthwise convolution, whose channels see different inputs).

Scale refinement (refine=R): once the codes are fixed the output error is quadratic in each
row's group scales (zero points stay integers): `refit_scales` solves for them, GPTQ then
rounds again against the new scales, R times, and every row keeps the candidate with its
lowest output error.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .primitives import (
    QuantizedTensor,
    _codes_dtype,
    choose_qparams,
    dequantize,
    dequantize_groups,
    group_layout,
    quantize,
    quantize_groups,
    super_scales,
)
from .spec import QuantSpec


def _check_hessian(h: torch.Tensor, rows: int, n: int, where: str) -> None:
    ok = (h.dim() == 2 and h.shape == (n, n)) or (h.dim() == 3 and h.shape == (rows, n, n))
    if not ok:
        raise ValueError(f"{where}: Hessian of shape {tuple(h.shape)} does not fit a weight of "
                         f"{rows} rows of {n} inputs; allowed: ({n}, {n}) or ({rows}, {n}, {n})")


def group_hessians(h: torch.Tensor, shape, spec: QuantSpec) -> torch.Tensor:
    """The diagonal blocks H_g of H, one per group (zero-padded like the weight's groups):
    (n_groups, glen, glen), or (rows, n_groups, glen, glen) for a per-row Hessian. What
    `choose_qparams(..., hessian=)` weighs the clip search with."""
    layout = group_layout(shape, spec)
    n, glen, ng = layout.row_len, layout.group_len, layout.n_groups
    if spec.granularity == "tensor":
        raise ValueError("calibration needs per-row quantization parameters; granularity="
                         "'tensor' is not supported (allowed: 'channel', 'group')")
    _check_hessian(h, layout.rows, n, "group_hessians")
    h = h.to(torch.float32)
    pad = layout.pad
    if pad:
        h = torch.nn.functional.pad(h, (0, pad, 0, pad))
    idx = torch.arange(ng)
    blocks = h.unflatten(-1, (ng, glen)).unflatten(-3, (ng, glen))  # (..., ng, glen, ng, glen)
    if h.dim() == 2:
        return blocks[idx, :, idx, :]  # (ng, glen, glen)
    return blocks[:, idx, :, idx, :].transpose(0, 1)  # (rows, ng, glen, glen)


def _inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, batched over leading dims.
    Dampening is added on the diagonal in place (no identity matrix is built); at most two
    n x n float64 matrices are alive at once (the L size's largest input, 9728 wide, makes
    each 757 MB)."""
    mean = h.diagonal(dim1=-2, dim2=-1).mean(dim=-1, keepdim=True)
    h = h.clone()
    h.diagonal(dim1=-2, dim2=-1).add_(damp * mean)
    for extra in (0.0, 1e-2, 1e-1, 1.0):  # more damping if H is numerically not positive
        hd = h.double()
        if extra:
            hd.diagonal(dim1=-2, dim2=-1).add_((extra * mean.clamp(min=1e-8)).double())
        chol, info = torch.linalg.cholesky_ex(hd)
        del hd
        if not bool(info.any()):
            hinv = torch.cholesky_inverse(chol)
            del chol
            u, info = torch.linalg.cholesky_ex(hinv, upper=True)
            del hinv
            if not bool(info.any()):
                return u.to(torch.float32)
    raise ValueError("GPTQ: the Hessian is not positive definite even with damping 1.0; "
                     "use more calibration utterances")


def gptq_quantize(
    w: torch.Tensor,
    hessian: torch.Tensor,
    spec: QuantSpec,
    *,
    damp: float = 0.01,
    act_order: bool = False,
    block_size: int = 128,
    output_clip: bool = False,
    static_groups: bool = True,
    refine: int = 0,
) -> QuantizedTensor:
    """GPTQ codes of `w` for inputs whose Hessian is `hessian` (see the module docstring).

    w: any weight our quantizer takes (rows = w.shape[0], n = the rest flattened).
    hessian: X^T X of that layer's inputs, (n, n), or (rows, n, n) with one per row.
    output_clip: choose each group's clip ratio by the output error (`spec.clip_grid`)
        instead of `spec.clip`.
    static_groups: True: the qparams are those `quantize` would store, only the codes differ;
        False: each group's qparams come from its compensated weights (module docstring).
    refine: rounds of scale refinement after GPTQ: least-squares scales for the codes
        (`_refit`), then GPTQ codes for those scales; a row keeps whichever codes and
        scales give it the least output error, so its error never rises. 0: plain GPTQ.
    """
    if not 0.0 <= damp <= 1.0:
        raise ValueError(f"GPTQ damp={damp!r} is invalid; allowed: a float in [0, 1]")
    if not (isinstance(refine, int) and not isinstance(refine, bool) and refine >= 0):
        raise ValueError(f"GPTQ refine={refine!r} is invalid; allowed: an integer >= 0")
    if block_size < 1:
        raise ValueError(f"GPTQ block_size={block_size!r} is invalid; allowed: an integer >= 1")
    layout = group_layout(w.shape, spec)
    rows, n, glen = layout.rows, layout.row_len, layout.group_len
    if spec.granularity == "tensor":
        raise ValueError("GPTQ needs per-row quantization parameters; granularity='tensor' "
                         "is not supported (allowed: 'channel', 'group')")
    _check_hessian(hessian, rows, n, "GPTQ")
    dynamic = not static_groups and layout.n_groups > 1
    if dynamic and spec.scale_bits is not None:
        raise ValueError("GPTQ static_groups=False needs one stored scale per group; with "
                         f"scale_bits={spec.scale_bits} (double-quantized scales) the row's "
                         "super-scale needs every group first; allowed: static_groups=True")
    h = hessian.to(torch.float32).clone()
    weight = w.detach().reshape(rows, n).to(torch.float32).clone()
    dead = h.diagonal(dim1=-2, dim2=-1) == 0  # (n,) or (rows, n)
    if bool(dead.any()):
        h.diagonal(dim1=-2, dim2=-1)[dead] = 1.0
        weight[dead.expand(rows, n)] = 0.0

    qspec = dataclasses.replace(spec, clip="mse") if output_clip else spec
    hg = group_hessians(hessian, w.shape, spec) if output_clip else None
    qt = quantize(weight.reshape(w.shape), qspec, hessian=hg)  # the stored qparams
    scale = qt.float_scale().clone()  # (rows, n_groups), decoded float32
    zp = None if qt.zero_point is None else qt.zero_point.to(torch.float32).clone()

    perm = None
    if act_order:
        key = h.diagonal(dim1=-2, dim2=-1)
        perm = torch.argsort(key if key.dim() == 1 else key.sum(0), descending=True)
        h = h[..., perm, :][..., perm]
    u = _inverse_cholesky(h, damp)  # (n, n) or (rows, n, n)
    group_of = torch.arange(n) // glen
    if perm is not None:
        group_of = group_of[perm]

    choose = None
    if dynamic:
        def choose(g, now):  # a group's qparams from its compensated weights `now`
            s_g, z_g, _ = choose_qparams(
                F.pad(now, (0, glen - now.shape[1])).unsqueeze(1), qspec,
                None if hg is None else hg[..., g : g + 1, :, :])
            return s_g[:, 0, 0], None if z_g is None else z_g[:, 0, 0]

    def codes_for(scale, zp, choose=None):
        ordered = weight if perm is None else weight[:, perm]
        codes = _round_columns(ordered.clone(), u, group_of, scale, zp, spec, block_size,
                               glen, perm, choose)
        if perm is not None:
            codes = codes[:, torch.argsort(perm)]
        return codes.reshape(w.shape).to(_codes_dtype(spec))

    codes = codes_for(scale, zp, choose)
    if not dynamic:
        qt = dataclasses.replace(qt, codes=codes)
    else:
        qt = dataclasses.replace(qt, codes=codes, scale=scale.to(qt.scale.dtype),
                                 zero_point=None if zp is None else zp.to(qt.zero_point.dtype))
    if refine < 1:
        return qt
    # alternate: least-squares scales for these codes, GPTQ codes for those scales; each row
    # keeps the pair with the least output error (so refine never raises a row's error)
    target = weight.reshape(w.shape)
    best, best_err = qt, row_output_errors(target, dequantize(qt), hessian)
    for _ in range(refine):
        best, best_err = _keep_better(best, best_err, _refit(target, best, hessian), target,
                                      hessian)
        zp_now = None if best.zero_point is None else best.zero_point.to(torch.float32)
        again = dataclasses.replace(best, codes=codes_for(best.float_scale(), zp_now))
        best, best_err = _keep_better(best, best_err, again, target, hessian)
    return _keep_better(best, best_err, _refit(target, best, hessian), target, hessian)[0]


def _round_columns(weight, u, group_of, scale, zp, spec, block_size, glen, perm, choose):
    """GPTQ's column loop over `weight` (rows, n) in processing order (modified in place):
    the codes (rows, n), float32, in that order. `scale`/`zp` (rows, n_groups) are the
    groups' qparams; `choose(g, now)` (dynamic groups) picks a group's qparams when its first
    column is reached, writing them into `scale`/`zp`."""
    rows, n = weight.shape
    if choose is not None:
        position = torch.argsort(perm) if perm is not None else torch.arange(n)
        chosen = [False] * scale.shape[1]
    codes = torch.empty(rows, n)
    for i1 in range(0, n, block_size):
        i2 = min(i1 + block_size, n)
        w1 = weight[:, i1:i2].clone()
        err1 = torch.empty_like(w1)
        u1 = u[..., i1:i2, i1:i2]
        for i in range(i2 - i1):
            g = int(group_of[i1 + i])
            if choose is not None and not chosen[g]:
                at = position[g * glen : min(n, (g + 1) * glen)]  # all >= i1 + i
                s_g, z_g = choose(g, _current_columns(weight, w1, err1[:, :i], u, i1, i, at))
                scale[:, g] = s_g
                if zp is not None:
                    zp[:, g] = z_g
                chosen[g] = True
            s = scale[:, g : g + 1]
            z = None if zp is None else zp[:, g : g + 1]
            col = w1[:, i : i + 1]
            q = quantize_groups(col, s, z, spec)
            codes[:, i1 + i] = q[:, 0]
            d = u1[i, i] if u1.dim() == 2 else u1[:, i, i].unsqueeze(-1)
            e = (col - dequantize_groups(q, s, z)) / d
            row_u = u1[i, i:].unsqueeze(0) if u1.dim() == 2 else u1[:, i, i:]
            w1[:, i:] -= e * row_u
            err1[:, i] = e[:, 0]
        if i2 < n:
            if u.dim() == 2:
                weight[:, i2:] -= err1 @ u[i1:i2, i2:]
            else:
                weight[:, i2:] -= torch.einsum("ri,rij->rj", err1, u[:, i1:i2, i2:])
    return codes


def _current_columns(weight, w1, err_done, u, i1: int, i: int, at: torch.Tensor) -> torch.Tensor:
    """(rows, len(at)) weights at processing positions `at` (all >= i1 + i) as the error
    compensation has left them after i columns of the block that starts at i1: columns of
    the block are up to date in w1; later ones still lack this block's lazy update."""
    out = torch.empty(weight.shape[0], len(at))
    inside = at < i1 + w1.shape[1]
    if bool(inside.any()):
        out[:, inside] = w1[:, at[inside] - i1]
    later = at[~inside]
    if len(later):
        cols = weight[:, later]
        if i:
            if u.dim() == 2:
                cols = cols - err_done @ u[i1 : i1 + i, later]
            else:
                cols = cols - torch.einsum("ri,rij->rj", err_done, u[:, i1 : i1 + i, later])
        out[:, ~inside] = cols
    return out


def output_error(w: torch.Tensor, w_hat: torch.Tensor, hessian: torch.Tensor) -> float:
    """sum over rows of (w - w^)^T H (w - w^) = ||X W^T - X W^^T||^2 for H = X^T X."""
    return float(row_output_errors(w, w_hat, hessian).sum())


def row_output_errors(w: torch.Tensor, w_hat: torch.Tensor, hessian: torch.Tensor
                      ) -> torch.Tensor:
    """Per row (rows,) the output error (w_r - w^_r)^T H (w_r - w^_r) (H shared or per row);
    its sum is `output_error`."""
    e = (w.detach().reshape(w.shape[0], -1) - w_hat.detach().reshape(w.shape[0], -1)).float()
    h = hessian.float()
    if h.dim() == 2:
        return ((e @ h) * e).sum(dim=1)
    return torch.einsum("ri,rij,rj->r", e, h, e)


def refit_scales(w: torch.Tensor, qt: QuantizedTensor, hessian: torch.Tensor,
                 chunk_floats: int = 1 << 24) -> QuantizedTensor:
    """`qt` with the least-squares group scales of `_refit` in every row where they lower the
    output error (elsewhere its own)."""
    before = row_output_errors(w, dequantize(qt), hessian)
    return _keep_better(qt, before, _refit(w, qt, hessian, chunk_floats), w, hessian)[0]


def _refit(w: torch.Tensor, qt: QuantizedTensor, hessian: torch.Tensor,
           chunk_floats: int = 1 << 24) -> QuantizedTensor:
    """The group scales that minimise the output error of fixed codes and zero points.

    Per row, w^_i = s_g(i) * (q_i - z_g(i)) is linear in the row's scales, so
    min_s (w - w^)^T H (w - w^) is the n_groups x n_groups system A s = b with
    A_gh = v_g^T H v_h and b_g = v_g^T H w, v_g the row's q - z on group g and 0 elsewhere
    (solved in float64). The solution is rounded to the nearest `scale_dtype` value, or with
    `scale_bits` re-encoded: a new super-scale (largest scale / (2^k - 1), rounded up) and
    codes round(s / super) in [1, 2^k - 1]. A group whose codes all equal its zero point
    keeps its scale; a row whose solution is not positive and finite keeps all its scales
    (`refit_scales` also keeps them where the rounded ones do not help). Codes and zero points are
    unchanged, so the result is ordinary codes on the same grid. Rows are processed in
    chunks of at most `chunk_floats` floats of (rows, n_groups, n) work space.
    """
    spec = qt.spec
    layout = qt.layout
    rows, n, glen, ng = layout.rows, layout.row_len, layout.group_len, layout.n_groups
    _check_hessian(hessian, rows, n, "refit_scales")
    target = w.detach().reshape(rows, n).to(torch.float64)
    h = hessian.to(torch.float64)
    group_of = torch.arange(n) // glen
    v = qt.codes.reshape(rows, n).to(torch.float64)
    if qt.zero_point is not None:
        v = v - qt.zero_point.to(torch.float64)[:, group_of]
    mask = torch.nn.functional.one_hot(group_of, ng).T.to(torch.float64)  # (ng, n)
    old = qt.float_scale().to(torch.float64)
    solved = torch.empty(rows, ng, dtype=torch.float64)
    step = max(1, chunk_floats // max(1, ng * n))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        vg = v[r0:r1].unsqueeze(1) * mask  # (c, ng, n)
        t = vg @ h if h.dim() == 2 else torch.einsum("rgi,rij->rgj", vg, h[r0:r1])
        a = t @ vg.transpose(1, 2)  # (c, ng, ng)
        b = torch.einsum("rgn,rn->rg", t, target[r0:r1])
        empty = a.diagonal(dim1=1, dim2=2) <= 0
        a.diagonal(dim1=1, dim2=2)[empty] = 1.0
        b[empty] = 0.0
        a.diagonal(dim1=1, dim2=2).mul_(1.0 + 1e-9)  # a hair of ridge for near-singular A
        s, info = torch.linalg.solve_ex(a, b.unsqueeze(-1))
        s = s.squeeze(-1)
        s = torch.where(empty, old[r0:r1], s)
        bad = (info != 0) | ~torch.isfinite(s).all(dim=1) | (s <= 0).any(dim=1)
        solved[r0:r1] = torch.where(bad.unsqueeze(1), old[r0:r1], s)
    solved = solved.to(torch.float32)
    if spec.scale_bits is None:
        sdt = spec.torch_scale_dtype
        tiny = torch.finfo(sdt).tiny
        new = dataclasses.replace(qt, scale=solved.clamp(min=tiny).to(sdt))
    else:
        sup = super_scales(solved, spec)  # (rows, 1)
        codes = torch.round(solved / sup).clamp_(1, 2**spec.scale_bits - 1)
        new = dataclasses.replace(qt, scale=codes.to(torch.uint8),
                                  super_scale=sup.reshape(-1).to(spec.torch_scale_dtype))
    return new


def _keep_better(best: QuantizedTensor, best_err: torch.Tensor, cand: QuantizedTensor,
                 w: torch.Tensor, hessian: torch.Tensor):
    """Row by row the one of two quantizations (same spec) with the lower output error."""
    err = row_output_errors(w, dequantize(cand), hessian)
    better = err < best_err
    if not bool(better.any()):
        return best, best_err

    def pick(a, b):  # a row-major tensor (rows, ...) from cand where better, else best
        if a is None:
            return None
        m = better.reshape(-1, *[1] * (a.dim() - 1))
        return torch.where(m, a, b)

    rows = better.shape[0]
    codes = pick(cand.codes.reshape(rows, -1), best.codes.reshape(rows, -1))
    merged = dataclasses.replace(
        best, codes=codes.reshape(best.codes.shape),
        scale=pick(cand.scale, best.scale),
        zero_point=pick(cand.zero_point, best.zero_point),
        super_scale=pick(cand.super_scale, best.super_scale))
    return merged, torch.where(better, err, best_err)
