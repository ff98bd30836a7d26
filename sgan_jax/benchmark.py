"""Throughput and cost model of the training step.

`python -m sgan_jax.benchmark --config=configs/cifar10.py [--steps=N]
 [--json=out.json] [--config.global_batch_size=...] [--official_dir=DIR]
 [--profile_dir=DIR]`

Prints, and writes as JSON:
- the compile time, the median step time over N timed steps (after warm-up)
  and images/s, on random images already on the devices;
- the step's FLOPs counted from its differentiated program (`flops`), and the
  achieved FLOP/s as a fraction of a measured float32 matmul peak (and, on
  accelerators, of a bfloat16 one);
- the time and FLOPs of each phase: the D phase with and without the Jacobian
  term, the G phase, and the k-NN search;
- the overhead of the structural objectives over a plain step of the same
  networks with only the coarse (Gaussian) adversarial term;
- with `--official_dir`, the authors' PyTorch step at the same batch, in
  `--paired_rounds` rounds alternating with sgan_jax's (`interop.timing`),
  and the ratio of the two medians;
- with `--profile_dir`, a `jax.profiler` trace of two steps there and the
  costliest operations in it, each with the model code it came from
  (`profiling`);
- the input pipeline's images/s alone where the dataset is available, for
  each `--pipeline_workers` count of loader processes: with the augmentation
  on the host, and the host's part of device augmentation (uint8 decode and
  batch), each also per core; and the jitted device augmentation alone
  (`pipeline_rates`).
"""
import functools
import platform
import statistics
import time

from absl import app, flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags

from sgan_jax import (cli, config_lib, errors, flops, losses, pipeline_rates, profiling,
                      sharding, step, storage)
from sgan_jax.state import create_train_state
from sgan_jax.synthetic import synthetic_batch

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file.",
                                lock_config=True)
cli.define_compilation_cache_flag()
flags.DEFINE_integer("steps", 20, "Timed steps (after warm-up).")
flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
flags.DEFINE_string("json", None, "Write the figures to this JSON file.")
flags.DEFINE_bool("phases", True, "Also time and count each phase and the "
                  "plain step (one compile each).")
flags.DEFINE_string("official_dir", "", "A checkout of the authors' code: also "
                    "time their PyTorch step, in rounds alternating with sgan_jax's.")
flags.DEFINE_integer("paired_rounds", 3, "With --official_dir: rounds of --steps "
                     "steps each, sgan_jax then the authors'.")
flags.DEFINE_integer("pipeline_batches", 50, "Batches timed for the input "
                     "pipeline (0 skips it).")
flags.DEFINE_list("pipeline_workers", ["0", "1", "2"], "Loader worker-process "
                  "counts to time the input pipeline with.")
flags.DEFINE_string("profile_dir", "", "Also trace 2 steps with jax.profiler into "
                    "this folder and print the costliest operations.")
flags.mark_flags_as_required(["config"])


def plain_d_loss(state, d_params, both, labels, u):
  """The plain step's D loss: `-gaussian_jsd` of the real and fake halves of
  D(`both`) alone (no k-NN terms, Jacobian, hinge, probe or D_ema keys)."""
  del u   # no power iteration
  out = state.spec.discriminator().apply({"params": d_params}, both)
  n = labels.shape[0]
  real, fake = out.embedding[:n], out.embedding[n:]
  return (-losses.gaussian_jsd(real, fake, state.spec.loss.eps),
          step.DAux({}, out, None, None, None))


def plain_g_loss(state, real, fake):
  """The plain step's G loss: `gaussian_jsd` of D's unit embeddings alone."""
  d_net = state.spec.discriminator()
  fake_emb = d_net.apply({"params": state.d_params}, fake).embedding
  return losses.gaussian_jsd(real.emb, fake_emb, state.spec.loss.eps), {}


def unit_sigma(embed, images, u, num_iters):
  """`step.power_iteration`'s stand-in without the Jacobian term's work:
  sigma 1 on every row (the smoothness penalty is then 0)."""
  del u, num_iters
  return jnp.ones((images.shape[0],), images.dtype), embed(images)[1]


def plain_step(state, batch):
  """The baseline: the step's phases with `plain_d_loss` and `plain_g_loss`
  (the same networks and optimisers; no EMA or queue update)."""
  noise = step.draw_step_noise(state.spec, state.rng, batch["image"].shape[0])
  d_out = step.d_phase(state, batch, noise, plain_d_loss)
  g_out = step.g_phase(d_out.state, None, batch, noise, plain_g_loss)
  return g_out.state.replace(step=state.step + 1), {}


def _seconds_per_call(call, calls: int, warmup: int):
  """Wall seconds of each of `calls` calls of `call()` after `warmup`
  untimed ones; each call is waited for (`jax.block_until_ready` on what it
  returns)."""
  for _ in range(warmup):
    jax.block_until_ready(call())
  times = []
  for _ in range(calls):
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - t0)
  return times


def _compile(jitted, *args):
  """(compiled executable, compile seconds)."""
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - t0


def _time(fn, args, steps, warmup):
  """Compile seconds and the median seconds of `fn(*args)` (not donated)."""
  compiled, compile_s = _compile(jax.jit(fn), *args)
  return compile_s, statistics.median(
      _seconds_per_call(lambda: compiled(*args), steps, warmup))


def matmul_peak_flops(dtype=jnp.float32, size=2048, repeats=5):
  """Best matmul FLOP/s of this backend in `dtype` (a measured, practical peak)."""
  a = jnp.ones((size, size), dtype)
  f = jax.jit(lambda x: x @ x)
  best = min(_seconds_per_call(lambda: f(a), repeats, warmup=1))
  return 2 * size ** 3 / best


def _phase_parts(state, batch):
  """{name: (function, args)} for each separately timed part of the step."""
  spec, n = state.spec, batch["image"].shape[0]
  noise = step.draw_step_noise(spec, jax.random.PRNGKey(1), n)
  real_keys = step.ema_keys(spec, state.d_ema_params, batch["image"])
  unit = lambda k, c: jax.random.normal(k, (n, c)) / jnp.sqrt(c)
  embed_dim = spec.model.embed_dim
  knn_args = (real_keys, unit(jax.random.PRNGKey(2), embed_dim), real_keys,
              unit(jax.random.PRNGKey(3), embed_dim), state.queue_keys, state.queue_emb)
  knn = lambda *a: losses.knn_similarities(
      *a, k=spec.loss.knn_k, skip_nearest_fake=spec.loss.skip_nearest_fake)
  no_jacobian = functools.partial(step.d_loss, sigma_fn=unit_sigma)
  return {
      "plain_step": (plain_step, (state, batch)),
      "d_phase": (step.d_phase, (state, batch, noise)),
      "d_phase_no_jacobian": (lambda *a: step.d_phase(*a, no_jacobian),
                              (state, batch, noise)),
      "g_phase": (step.g_phase, (state, real_keys, batch, noise)),
      "knn_search": (knn, knn_args),
  }


def _peak_fractions(achieved: float):
  """Measured matmul peaks of this backend and the fraction `achieved` is of them."""
  on_cpu = jax.default_backend() == "cpu"
  # JAX's default precision: on NVIDIA GPUs float32 matmuls may use TF32.
  peak = matmul_peak_flops(size=2048 if on_cpu else 8192)
  out = {"matmul_peak_fp32_flops_per_s": peak, "fraction_of_fp32_peak": achieved / peak}
  if not on_cpu:   # XLA:CPU has no fast bf16 matmul
    peak16 = matmul_peak_flops(jnp.bfloat16, size=8192)
    out.update(matmul_peak_bf16_flops_per_s=peak16, fraction_of_bf16_peak=achieved / peak16)
  return out


def _paired_with_reference(official_dir, config, one_step, steps: int, warmup: int,
                           rounds: int):
  """Alternating rounds of `steps` sgan_jax steps and `steps` steps of the
  authors' code, on the same machine and batch (`interop.timing`)."""
  from sgan_jax.interop import timing  # pylint: disable=import-outside-toplevel
  timer = timing.ReferenceTimer(official_dir, config,
                                device=timing.torch_device(jax.default_backend()))
  own, ref = [], []
  for r in range(rounds):
    own.append(_seconds_per_call(one_step, steps, 0))
    ref.append(_seconds_per_call(timer.step, steps, warmup if r == 0 else 0))
  return {**timing.paired_figures(own, ref, config.global_batch_size),
          "reference_torch_threads": timer.threads, "reference_device": timer.device}


def _profile(one_step, compiled, profile_dir: str, calls: int = 2):
  """A trace of `calls` steps and the costliest operations in it (`profiling`)."""
  trace_file = profiling.trace(one_step, calls, profile_dir)
  ops = profiling.costliest_ops(trace_file, compiled.as_text(), calls)
  return {"profile_trace": trace_file,
          "costliest_ops": [f"{s:.4f} s/step  {op}  {name}" for s, op, name in ops]}


def measure(config, steps: int, warmup: int, pipeline_batches: int = 0,
            phases: bool = True, official_dir: str = "", paired_rounds: int = 3,
            profile_dir: str = "", pipeline_workers=(0,)):
  """Every figure of the benchmark, as a flat dict (the phase split and the
  plain-step overhead only with `phases`; paired rounds against the authors'
  step with `official_dir`; a profile of two steps with `profile_dir`)."""
  mesh = sharding.make_mesh()
  config_lib.validate(config, jax.process_count(), jax.device_count())
  state = create_train_state(config, jax.random.PRNGKey(0), mesh)
  batch = synthetic_batch(config, mesh)
  n = config.global_batch_size
  result = {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
            "num_devices": jax.device_count(), "host": platform.node(),
            "jax_version": jax.__version__, "global_batch_size": n,
            "image_size": config.image_size, "timed_steps": steps}
  result["step_flops"] = flops.count(step.step_fn, state, batch)
  result["compute_dtype"] = config.model.compute_dtype
  for name, (fn, args) in (_phase_parts(state, batch).items() if phases else ()):
    compile_s, median = _time(fn, args, max(steps // 2, 1), warmup)
    result[f"{name}_flops"] = flops.count(fn, *args)
    result[f"{name}_time_s"] = median
    result[f"{name}_compile_s"] = compile_s
  # The real, sharded and donating step, as the training loop runs it.
  compiled, result["compile_s"] = _compile(step.make_train_step(mesh), state, batch)
  carry = {"state": state}

  def one_step():
    carry["state"], carry["metrics"] = compiled(carry["state"], batch)
    return carry["metrics"]
  times = _seconds_per_call(one_step, steps, warmup)
  metrics, median = carry["metrics"], statistics.median(times)
  result.update(step_time_median_s=median, step_time_min_s=min(times),
                images_per_s=n / median, achieved_flops_per_s=result["step_flops"] / median,
                final_d_loss=float(metrics["d/loss"]), final_g_loss=float(metrics["g/loss"]))
  if phases:
    result["structural_overhead"] = median / result["plain_step_time_s"]
    result["jacobian_share_of_d_phase"] = 1 - (result["d_phase_no_jacobian_time_s"]
                                               / result["d_phase_time_s"])
  if profile_dir:
    result.update(_profile(one_step, compiled, profile_dir))
  if official_dir:
    result.update(_paired_with_reference(official_dir, config, one_step, steps,
                                         warmup, paired_rounds))
  result.update(_peak_fractions(result["achieved_flops_per_s"]))
  result.update(pipeline_rates.pipeline_figures(
      config, pipeline_batches, pipeline_workers, result["images_per_s"]))
  return result


def main(argv):
  del argv
  if FLAGS.official_dir:
    from sgan_jax.interop import timing  # pylint: disable=import-outside-toplevel
    with cli.exit_on({errors.ConfigError: cli.USER_ERROR}):
      timing.check_comparable(FLAGS.config, jax.default_backend())
  cache = cli.use_compilation_cache(FLAGS.compilation_cache_dir)
  result = measure(FLAGS.config, FLAGS.steps, FLAGS.warmup, FLAGS.pipeline_batches,
                   FLAGS.phases, FLAGS.official_dir, FLAGS.paired_rounds,
                   FLAGS.profile_dir, [int(w) for w in FLAGS.pipeline_workers])
  for key, value in result.items():
    if key == "costliest_ops":
      print(f"{key:>30}:", *value, sep="\n  ")
      continue
    if isinstance(value, list):
      value = ", ".join(f"{v:.4g}" for v in value)
    print(f"{key:>30}: {value:.4g}" if isinstance(value, float) else f"{key:>30}: {value}")
  if cache is not None:
    print(cache.summary())   # a loaded step makes compile_s a load time
  if FLAGS.json:
    storage.write_json(FLAGS.json, result)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
