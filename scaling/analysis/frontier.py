"""Compute-efficient frontier and the run planner: a FLOP budget → N, B, S, D, expected loss, shape, gin.

Three sources of the frontier:
* ``kaplan``: Kaplan et al. 2020 Table 6 (N_opt = 1.3e9·C_min^0.73, C_min in PF-days), L(C_min) from
  Table 5 and B_crit(L) from eq 5.3. Training at B = B_crit costs C = 2·C_min (eq 5.5), so C_min = C/2.
* ``chinchilla``: Hoffmann et al. 2022 eq 4 with the unrounded TeX constants; the batch comes from
  Kaplan's B_crit(L(C_min)) because Chinchilla gives no batch law.
* a fit JSON from ``experiments.fit`` (law chinchilla / muennighoff / kaplan_nd / isoflop).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from scaling.analysis import laws
from scaling.core import formulas


@dataclasses.dataclass(frozen=True)
class Shape:
    n_layer: int
    d_model: int
    d_ff: int
    d_attn: int
    n_heads: int

    @property
    def n_params(self) -> int:
        """Kaplan Table 1: N = 2·d_model·n_layer·(2·d_attn + d_ff) non-embedding parameters."""
        return formulas.kaplan_nonembedding_params(self.n_layer, self.d_model, self.d_attn, self.d_ff)

    @property
    def aspect(self) -> float:
        return self.d_model / self.n_layer


def choose_shape(n_target: float, aspect_range=(40.0, 100.0), max_layers=128, max_width=32768) -> Shape:
    """The transformer with N = 12·n_layer·d_model² closest to `n_target` (in log), d_model a multiple of 64.

    d_ff = 4·d_model, d_attn = d_model, n_heads = d_model/64. Shapes inside Kaplan's good aspect-ratio range
    (d_model/n_layer ≈ 40-100, Fig. 5: loss varies by only a few percent there) are preferred unless that
    misses the target by more than ~28 %; ties go to the ratio nearest the range's geometric middle. Tiny
    targets, which the 64-wide granularity cannot hit in range, get the nearest shape of any aspect.
    """
    if not n_target > 0:
        raise ValueError(f"target parameter count must be > 0, got {n_target}")
    middle = math.sqrt(aspect_range[0] * aspect_range[1])
    best, best_key = None, None
    for n_layer in range(1, max_layers + 1):
        # d_model near sqrt(N/(12 n_layer)), rounded to multiples of 64 on both sides.
        ideal = math.sqrt(n_target / (12 * n_layer))
        for d_model in {max(64, 64 * math.floor(ideal / 64)), max(64, 64 * math.ceil(ideal / 64))}:
            if d_model > max_width:
                continue
            shape = Shape(n_layer, d_model, 4 * d_model, d_model, max(1, d_model // 64))
            in_range = aspect_range[0] <= shape.aspect <= aspect_range[1]
            # Leaving the aspect range costs as much as a ~28 % size error (Fig. 5: a few % in loss).
            key = (round(abs(math.log(shape.n_params / n_target)) + (0.0 if in_range else 0.25), 3),
                   abs(math.log(shape.aspect / middle)))
            if best_key is None or key < best_key:
                best, best_key = shape, key
    return best


def kaplan_plan_quantities(c_flops: float, B_star=laws.KAPLAN_TABLE5["B_star"], alpha_B=laws.KAPLAN_TABLE5["alpha_B"]):
    """Kaplan frontier at a spend of C FLOPs trained at B = B_crit (so C_min = C/2)."""
    cmin_pfd = c_flops / 2.0 / laws.PF_DAY_FLOPS
    n_opt = laws.kaplan_frontier(cmin_pfd)["N_opt"]
    loss = laws.loss_of_cmin(cmin_pfd)
    return dict(N_opt=n_opt, loss=loss, B_crit=laws.critical_batch(loss, B_star, alpha_B), C_min=c_flops / 2.0)


def n_opt_numeric(loss_fn, c_flops: float, flops_per_param_token=6.0, lo=1e3, hi=1e16) -> float:
    """argmin_N L(N, C/(6N)) on a fine log grid then golden-section (any fitted L(N, D))."""
    grid = np.exp(np.linspace(math.log(lo), math.log(hi), 4001))
    values = loss_fn(grid, c_flops / (flops_per_param_token * grid))
    i = int(np.nanargmin(values))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    f = lambda n: float(loss_fn(np.array([n]), np.array([c_flops / (flops_per_param_token * n)]))[0])
    phi = (math.sqrt(5) - 1) / 2
    for _ in range(100):
        c, d = b - phi * (b - a), a + phi * (b - a)
        if f(c) < f(d):
            b = d
        else:
            a = c
    return (a + b) / 2


def frontier_from_law(law, c_flops: float, fit: dict | None = None):
    """(N_opt, expected loss or None, description of the constants) for a law name or a fit JSON."""
    if law == "kaplan":
        q = kaplan_plan_quantities(c_flops)
        return q["N_opt"], q["loss"], "Kaplan et al. 2020 Tables 5-6 (paper constants)"
    if law == "chinchilla":
        p = laws.CHINCHILLA_TEX
        fr = laws.chinchilla_frontier(c_flops, p["A"], p["B"], p["alpha"], p["beta"], p["E"])
        return fr["N_opt"], fr["loss"], "Hoffmann et al. 2022 eq 10 TeX constants (paper constants)"
    if fit is None:
        raise ValueError(f"unknown law {law!r}; use kaplan, chinchilla or a fit JSON file")
    name, p = fit.get("law"), fit.get("params", {})
    src = f"fit file {law} (law={name})"
    if name in ("chinchilla", "muennighoff"):
        fr = laws.chinchilla_frontier(c_flops, p["A"], p["B"], p["alpha"], p["beta"], p["E"])
        return fr["N_opt"], fr["loss"], src
    if name == "isoflop":
        return p["k_N"] * c_flops ** p["a"], None, src
    if name == "kaplan_nd":
        fn = lambda N, D: laws.loss_of_nd(N, D, p["N_c"], p["D_c"], p["alpha_N"], p["alpha_D"])
        n = n_opt_numeric(fn, c_flops)
        return n, float(fn(np.array([n]), np.array([c_flops / formulas.training_flops(n, 1.0)]))[0]), src
    raise ValueError(f"fit file {law} has law {name!r}, which gives no compute frontier; "
                     "fit law=chinchilla, isoflop, kaplan_nd or muennighoff")


def plan(c_flops: float, law="kaplan", fit: dict | None = None, bcrit: dict | None = None, n_ctx: int = 1024):
    """The run for a budget: shape near N_opt, batch at B_crit, steps that spend exactly C (up to rounding).

    `bcrit` is an optional fit JSON (law=bcrit) whose B*, α_B replace Kaplan's; B_crit is evaluated at the
    expected loss (Kaplan's L(C_min) when the law predicts none).
    """
    if not (c_flops > 0 and math.isfinite(c_flops)):
        raise ValueError(f"--compute must be a positive number of FLOPs, got {c_flops}")
    n_opt, loss, source = frontier_from_law(law, c_flops, fit)
    kaplan = kaplan_plan_quantities(c_flops)
    b_star, alpha_b = laws.KAPLAN_TABLE5["B_star"], laws.KAPLAN_TABLE5["alpha_B"]
    batch_source = "Kaplan eq 5.3 B_crit(L) = 2.1e8/L^(1/0.21)"
    if bcrit is not None:
        b_star, alpha_b = bcrit["params"]["B_star"], bcrit["params"]["alpha_B"]
        batch_source = "fitted B_crit(L) from the bcrit fit file"
    loss_for_batch = loss if (law == "kaplan" or bcrit is not None) and loss is not None else kaplan["loss"]
    b_crit_tokens = float(laws.critical_batch(loss_for_batch, b_star, alpha_b))
    shape = choose_shape(n_opt)
    n = shape.n_params
    batch_seqs = max(1, int(round(b_crit_tokens / n_ctx)))
    batch_tokens = batch_seqs * n_ctx
    steps = max(1, int(math.ceil(c_flops / formulas.training_flops(n, batch_tokens))))
    tokens = steps * batch_tokens
    return dict(
        compute_flops=c_flops, compute_pf_days=formulas.pf_days(c_flops), law=str(law), constants=source,
        N_opt=float(n_opt), N=n, shape=dataclasses.asdict(shape), aspect_ratio=shape.aspect,
        expected_loss=None if loss is None else float(loss),
        B_crit_tokens=b_crit_tokens, batch_source=batch_source, batch_size=batch_seqs, batch_tokens=batch_tokens,
        n_ctx=n_ctx, num_steps=steps, S_min=steps / (1 + b_crit_tokens / batch_tokens), D_tokens=tokens,
        tokens_per_param=tokens / n, flops_spent=formulas.training_flops(n, tokens))


def gin_text(p: dict, command: str) -> str:
    """The trainer-loadable gin file for a plan (names the trainer honours)."""
    s = p["shape"]
    return "\n".join([
        f"# Generated by {command} (law={p['law']}, constants from {p['constants']})",
        f"# N = {p['N']:.4g} non-embedding params (N_opt = {p['N_opt']:.4g}), D = {p['D_tokens']:.4g} tokens, "
        f"C = {p['flops_spent']:.4g} FLOPs",
        "include 'gin/data/embedded.gin'",
        f"TransformerConfig.n_layer = {s['n_layer']}",
        f"TransformerConfig.d_model = {s['d_model']}",
        f"TransformerConfig.d_ff = {s['d_ff']}",
        f"TransformerConfig.d_attn = {s['d_attn']}",
        f"TransformerConfig.n_heads = {s['n_heads']}",
        f"TransformerConfig.n_ctx = {p['n_ctx']}",
        "TrainConfig.model = @TransformerConfig()",
        f"TrainConfig.batch_size = {p['batch_size']}        # global batch in sequences (B_crit tokens / n_ctx)",
        f"TrainConfig.num_steps = {p['num_steps']}",
        *_noise_scale_lines(p["batch_size"]),
        ""])


def _noise_scale_lines(batch_size: int) -> list[str]:
    """K microbatches for the in-step noise-scale estimator: the largest of 4, 2 that divides B."""
    k = next((k for k in (4, 2) if batch_size % k == 0), 1)
    if k == 1:
        return ["TrainConfig.microbatches = 1",
                "TrainConfig.noise_scale = False  # one sequence per step: no second gradient sample"]
    return [f"TrainConfig.microbatches = {k}  # noise-scale estimator: K strided microbatches"]
