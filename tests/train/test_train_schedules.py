"""The learning-rate schedules are optax's (issue 18): equal to the hand-written formulas they replaced."""
import jax.numpy as jnp
import numpy as np
import pytest

from scaling.train import optimizers


def reference(kind, peak, num_steps, warmup_steps, decay_fraction=0.2, final_fraction=0.0):
    """The formulas scaling/train/optimizers.py wrote out before it used optax (kept here as the spec)."""
    final = peak * final_fraction
    warmup_steps = max(0, min(warmup_steps, num_steps))
    decay_steps = max(1, num_steps - warmup_steps)
    wsd_decay = max(1, round(decay_fraction * num_steps))
    wsd_start = num_steps - wsd_decay

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = jnp.minimum(1.0, (step + 1.0) / max(1, warmup_steps)) if warmup_steps else 1.0
        if kind == "constant":
            return peak * warm
        if kind == "cosine":
            progress = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
            decayed = final + (peak - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
            return jnp.where(step < warmup_steps, peak * warm, decayed)
        progress = jnp.clip((step - wsd_start) / wsd_decay, 0.0, 1.0)
        decayed = peak + (final - peak) * progress
        return jnp.where(step < warmup_steps, peak * warm, decayed)

    return schedule


CASES = [(kind, peak, steps, warmup, frac, final)
         for kind in ("cosine", "constant", "wsd")
         for peak, steps, warmup in ((3e-3, 100, 10), (6e-4, 1000, 0), (1e-3, 50, 1), (2e-3, 40, 40), (1e-3, 30, 25))
         for frac, final in ((0.2, 0.0), (0.5, 0.1), (1.0, 0.0))]


@pytest.mark.parametrize("kind,peak,steps,warmup,frac,final", CASES)
def test_optax_schedules_equal_the_old_formulas(kind, peak, steps, warmup, frac, final):
    new = optimizers.make_schedule(kind, peak, steps, warmup, decay_fraction=frac, final_fraction=final)
    old = reference(kind, peak, steps, warmup, frac, final)
    points = np.arange(0, steps + 5)
    got = np.asarray([float(new(s)) for s in points])
    want = np.asarray([float(old(s)) for s in points])
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=peak * 1e-7)
    assert new(jnp.int32(3)).dtype == jnp.float32
