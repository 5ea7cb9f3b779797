"""Performance contracts that can be checked fast (timings live in experiments/bench_*.py):
one compile per member group, the ``threads`` strategy, mixed precision, XLA CPU options."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tr_jax as tj
from tr_jax import config
from tr_jax.training import StepConfig, Trainer, init_state, stack, unstack
from tr_jax import members as mem
from tr_jax.training.steps import compute_model


class CompileCounter:
    """Counts XLA backend compiles of functions whose name contains ``name`` (jax.monitoring)."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self, name: str):
        self.name, self.count = name, 0

    def _listener(self, event, duration, **kw):
        if event == self.EVENT and self.name in str(kw.get("fun_name", "")):
            self.count += 1

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listener)


def _members(M, mean=0.5, n=128, seed=0):
    """M members of PreResNet-8 (width 0.5) on 8x8x1 data; ``mean`` makes the StepConfig (and so
    the compiled program) unique to a test."""
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, (n,)), jnp.int32)
    model = tj.models.preresnet(8, 10, width=0.5)
    states = []
    for i in range(M):
        v = tj.models.init(model, jax.random.key(seed + i), (8, 8, 1))
        states.append(init_state(v, jax.tree.map(jnp.ones_like, v["params"]),
                                 jax.random.key(100 + seed + i), 0.05 * (i + 1), 1e-4))
    cfg = StepConfig(mean=(mean,), std=(0.25,), batch_size=32, pad=1, flip=True)
    return model, cfg, stack(states), images, labels


@pytest.mark.parametrize("strategy, mean", [("threads", 0.41), ("vmap", 0.42)])
def test_one_compile_per_member_group(strategy, mean):
    """Several epochs of several equal chunks compile the train function once (lr schedules and
    epochs are traced values); a second group of the same shapes compiles nothing."""
    model, cfg, state, X, Y = _members(2, mean)
    with CompileCounter("train_steps") as c:
        tr = Trainer(model, cfg, strategy, chunk_steps=2, milestones=(1,))  # 4 steps = 2 chunks
        final, _ = tr.fit(state, X, Y, 2)
        assert c.count == 1
        other = _members(2, mean, seed=7)[2]  # same shapes (vmap: same M)
        Trainer(model, cfg, strategy, chunk_steps=2, milestones=(0,)).fit(other, X, Y, 2)
        assert c.count == 1
    assert jax.tree.leaves(final.params)[0].shape[0] == 2


def test_threads_equals_loop_and_separate_runs():
    """``threads`` runs loop's single-member program from host threads: bit-identical to
    ``loop``, and equal to each member trained alone."""
    model, cfg, state, X, Y = _members(2, 0.43)
    res = {s: Trainer(model, cfg, s, chunk_steps=2).fit(jax.tree.map(jnp.copy, state), X, Y, 1)[0]
           for s in ("loop", "threads:2")}
    for a, b in zip(jax.tree.leaves(res["loop"]), jax.tree.leaves(res["threads:2"])):
        np.testing.assert_array_equal(a, b)
    for i, one in enumerate(unstack(state)):
        alone = Trainer(model, cfg, "loop", chunk_steps=2).fit(stack([one]), X, Y, 1)[0]
        for a, b in zip(jax.tree.leaves(alone.params), jax.tree.leaves(res["threads:2"].params)):
            np.testing.assert_allclose(a[0], b[i], rtol=1e-5, atol=1e-6)
    err, _ = Trainer(model, cfg, "threads").evaluate(unstack(res["threads:2"]), X, Y)
    err_loop, _ = Trainer(model, cfg, "loop").evaluate(unstack(res["loop"]), X, Y)
    np.testing.assert_array_equal(err, err_loop)
    assert err.shape == (2,)


def test_strategy_names():
    assert mem.resolve("threads:2") == "threads:2" and mem.num_threads("threads:2") == 2
    assert mem.per_member("threads") and mem.per_member("loop") and not mem.per_member("vmap")
    assert mem.resolve("auto", "cpu") == "threads" and mem.resolve("auto", "gpu") == "vmap"
    with pytest.raises(ValueError, match="'threads:0'"):
        mem.resolve("threads:0")


def test_cpu_compiler_options_turn_ynnpack_off():
    opts = mem.compiler_options("cpu")
    if opts is None:
        pytest.skip("this jaxlib has no YNNPACK option (or XLA_FLAGS sets it)")
    f = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    x, w = jnp.ones((2, 8, 8, 32)), jnp.ones((3, 3, 32, 32))
    assert "__ynn_fusion" not in mem.jit(f).lower(x, w).compile().as_text()
    assert mem.compiler_options("gpu") is None


def test_bfloat16_training_stays_close_to_float32():
    """bf16 compute: convs really run in bf16, params / optimiser state / BN stats stay float32,
    and one epoch ends near the float32 run."""
    model, cfg, state, X, Y = _members(1, 0.43)  # float32 program shared with the test above
    cfg16 = StepConfig(**{**cfg.__dict__, "precision": "bfloat16"})
    x = jnp.zeros((4, 8, 8, 1), jnp.float32)
    v = {"params": unstack(state.params)[0], "batch_stats": unstack(state.batch_stats)[0]}
    jaxpr = str(jax.make_jaxpr(lambda v, x: tj.models.apply(
        compute_model(model, "bfloat16"), v, x, train=True))(v, x))
    assert "conv_general_dilated" in jaxpr and "bf16[4,8,8,8]" in jaxpr  # bf16 conv outputs
    out = {}
    for name, c in (("f32", cfg), ("bf16", cfg16)):
        tr = Trainer(model, c, "loop", chunk_steps=2, milestones=())
        final, _ = tr.fit(jax.tree.map(jnp.copy, state), X, Y, 1)
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(
            (final.params, final.batch_stats, final.opt_state)) if jnp.issubdtype(
                leaf.dtype, jnp.floating))
        variables = {"params": unstack(final.params)[0], "batch_stats": unstack(final.batch_stats)[0]}
        out[name] = (final, tj.models.apply(model, variables, tj.data.normalize(X, (0.43,), (0.25,))))
    p32, p16 = (jax.tree.leaves(out[k][0].params) for k in ("f32", "bf16"))
    moved = max(float(jnp.abs(a - b).max()) for a, b in zip(p32, jax.tree.leaves(state.params)))
    diff = max(float(jnp.abs(a - b).max()) for a, b in zip(p32, p16))
    assert 0 < diff < 0.25 * moved  # bf16 differs, but far less than training moved the weights
    l32, l16 = out["f32"][1], out["bf16"][1]
    assert float(jnp.abs(l32 - l16).max()) < 0.05 * float(jnp.abs(l32).max()) + 0.02


def test_precision_errors_name_the_value():
    with pytest.raises(ValueError, match="'fp16'"):
        StepConfig(mean=(0.5,), std=(0.25,), precision="fp16")
    import flax.linen as nn

    class NoDtype(nn.Module):  # every built-in architecture has a compute dtype
        def __call__(self, x):
            return x

    with pytest.raises(ValueError, match="NoDtype has none"):
        compute_model(NoDtype(), "bfloat16")
    cfg = config.default_config()
    cfg.run.precision = "fp16"
    with pytest.raises(ValueError, match="'fp16'"):
        config.validate(cfg)



def test_backend_batch_defaults_and_their_errors():
    """0 = the backend's measured default; a positive value is kept; a negative one is refused
    with the value named (directly and through the config)."""
    assert mem.eval_batch_size(0, "cpu") == 128 and mem.eval_batch_size(0, "gpu") == 500
    assert mem.eval_batch_size(37, "cpu") == 37
    assert mem.bn_chunk_batches(0, "cpu") == 1 and mem.bn_chunk_batches(0, "tpu") == 16
    assert mem.bn_chunk_batches(0, "cpu", batch_pixels=64 * 8 * 8) == 16  # digits
    assert mem.bn_chunk_batches(0, "cpu", batch_pixels=64 * 16 * 16) == 4
    assert mem.bn_chunk_batches(5, "gpu") == 5
    with pytest.raises(ValueError, match="-3"):
        mem.eval_batch_size(-3)
    with pytest.raises(ValueError, match="-2"):
        mem.bn_chunk_batches(-2)
    cfg = config.default_config()
    cfg.run.eval_batch_size = -4
    with pytest.raises(ValueError, match="run.eval_batch_size=-4"):
        config.validate(cfg)


def test_recalibration_and_evaluation_do_not_depend_on_how_batches_are_grouped():
    """BN statistics are the same whatever ``chunk_batches`` (batches per compiled call, a
    partial last batch included), and error counts the same whatever the evaluation batch."""
    model, cfg, state, X, Y = _members(1, 0.41, n=150)
    v = {"params": unstack(state.params)[0], "batch_stats": unstack(state.batch_stats)[0]}
    stats = [tj.landscape.recalibrate(model, v, X, (0.41,), (0.25,), batch_size=32,
                                      chunk_batches=c)["batch_stats"] for c in (1, 3, 0)]
    for other in stats[1:]:
        for a, b in zip(jax.tree.leaves(stats[0]), jax.tree.leaves(other)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    v = {"params": v["params"], "batch_stats": stats[0]}
    runs = [tj.landscape.evaluate(model, v, X, Y, (0.41,), (0.25,), batch_size=b)
            for b in (7, 64, 0)]
    assert len({float(r["error"]) for r in runs}) == 1
    np.testing.assert_allclose([float(r["loss"]) for r in runs], float(runs[0]["loss"]), rtol=1e-5)
