"""sgan_jax <-> the authors' PyTorch layout, injected randomness, and (with
torch and OFFICIAL_DIR) step-level parity with the authors' code."""
import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgan_jax import config_lib, sharding, step
from sgan_jax.interop import pytorch
from sgan_jax.state import StepSpec, abstract_train_state, create_train_state


def _random_reference_state(seed=0):
  """A reference-config TrainState filled with distinct random values (no
  init compile: shapes from `abstract_train_state`)."""
  config = config_lib.reference_config()
  abstract = abstract_train_state(config, sharding.make_mesh(jax.devices()[:1]))
  rng = np.random.default_rng(seed)

  def fill(s):
    if jnp.issubdtype(s.dtype, jnp.floating):
      return rng.standard_normal(s.shape).astype(s.dtype)
    return np.asarray(rng.integers(0, 7, s.shape), s.dtype)
  return jax.tree.map(fill, abstract)


@pytest.fixture(scope="module")
def reference_state():
  return _random_reference_state()


def _equal_trees(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  return all(np.array_equal(np.asarray(x), np.asarray(y)) and
             np.asarray(x).dtype == np.asarray(y).dtype for x, y in zip(la, lb))


def test_round_trip_through_the_authors_layout_is_exact(reference_state):
  s = reference_state
  dicts = pytorch.state_to_torch(s)
  back = pytorch.state_from_torch(dicts, s)
  for field in ("d_params", "d_ema_params", "g_params", "g_ema_params", "g_state",
                "queue_emb", "queue_keys", "queue_ptr"):
    assert _equal_trees(getattr(back, field), getattr(s, field)), field


def test_exported_keys_and_shapes_are_the_authors(reference_state):
  dicts = pytorch.state_to_torch(reference_state)
  d, g = dicts["state_dict_D"], dicts["state_dict_G"]
  # Names and layouts of the authors' modules (model.py, resnet.py,
  # generator.py, biggan_layers.py): torch conv [out, in, kh, kw], linear [out, in].
  expected_d = {"encoder.conv1.weight": (64, 3, 3, 3),
                "encoder.layer1.0.conv1.weight": (64, 64, 3, 3),
                "encoder.layer2.0.downsample.1.weight": (128, 64, 1, 1),
                "encoder.layer2.0.downsample.2.bias": (128,),
                "encoder.layer4.1.bn2.weight": (512,),
                "fc_head.0.weight": (512, 512), "fc_head.2.weight": (128, 512),
                "fc_head.2.bias": (128,), "linear_probing.weight": (10, 512),
                "queue": (10240, 128), "bg_queue": (10240, 512), "queue_ptr": (1,)}
  expected_g = {"G.firs_layer.weight": (128, 128), "G.firs_layer.u0": (1, 128),
                "G.firs_layer.sv0": (1,), "G.linear.weight": (512 * 16, 128),
                "G.blocks.0.0.conv1.weight": (128, 512, 1, 1),
                "G.blocks.0.0.bn1.gain.weight": (512, 128),
                "G.blocks.0.0.bn1.bias.u0": (1, 512),
                "G.blocks.0.0.bn1.stored_mean": (512,),
                "G.blocks.5.0.conv4.weight": (512, 128, 1, 1),
                "G.output_layer.0.gain": (512,), "G.output_layer.0.stored_var": (512,),
                "G.output_layer.2.weight": (3, 512, 3, 3)}
  for sd, expected in ((d, expected_d), (g, expected_g)):
    for key, shape in expected.items():
      assert sd[key].shape == shape, key
  # Parameter counts of docs/method.md §2 (D: encoder + head + probe; G).
  n_d = sum(v.size for k, v in d.items() if not k.startswith(("queue", "bg_queue")))
  assert n_d == 11_164_864 + 328_320 + 5_130
  n_g = sum(v.size for k, v in g.items()
            if not k.endswith(("u0", "sv0", "stored_mean", "stored_var")))
  assert n_g == 5_025_667
  # Layout: a torch conv weight is the Flax kernel transposed.
  assert d["encoder.conv1.weight"][5, 2, 0, 1] == \
      reference_state.d_params["encoder"]["stem"]["kernel"][0, 1, 2, 5]
  assert d["fc_head.2.weight"][7, 300] == \
      reference_state.d_params["head"]["layers_2"]["Dense_0"]["kernel"][300, 7]


def test_sv0_is_the_norm_of_u_times_w(reference_state):
  g = pytorch.state_to_torch(reference_state)["state_dict_G"]
  w, u = g["G.firs_layer.weight"].astype(np.float64), g["G.firs_layer.u0"].astype(np.float64)
  np.testing.assert_allclose(g["G.firs_layer.sv0"], [np.linalg.norm(u @ w)], rtol=1e-5)


def test_module_prefix_is_accepted(reference_state):
  dicts = pytorch.state_to_torch(reference_state)
  dicts["state_dict_D"] = {"module." + k: v for k, v in dicts["state_dict_D"].items()}
  back = pytorch.state_from_torch(dicts, reference_state)
  assert _equal_trees(back.d_params, reference_state.d_params)


def test_mismatches_name_the_first_offending_key(reference_state):
  s = reference_state
  dicts = pytorch.state_to_torch(s)
  bad = dict(dicts, state_dict_D=dict(dicts["state_dict_D"]))
  del bad["state_dict_D"]["encoder.layer3.1.conv2.weight"]
  with pytest.raises(pytorch.ConversionError,
                     match=r"state_dict_D has no key 'encoder.layer3.1.conv2.weight'.*\(256, 256, 3, 3\)"):
    pytorch.state_from_torch(bad, s)
  bad = dict(dicts, state_dict_G=dict(dicts["state_dict_G"]))
  bad["state_dict_G"]["G.linear.weight"] = np.zeros((4096, 128), np.float32)
  with pytest.raises(pytorch.ConversionError,
                     match=r"state_dict_G\['G.linear.weight'\] has shape \(4096, 128\).*\(8192, 128\)"):
    pytorch.state_from_torch(bad, s)
  bad = dict(dicts, moment_state_dict_G=dict(dicts["moment_state_dict_G"]))
  bad["moment_state_dict_G"]["G.blocks.6.0.conv1.weight"] = np.zeros((1,), np.float32)
  with pytest.raises(pytorch.ConversionError, match=r"'G.blocks.6.0.conv1.weight'"):
    pytorch.state_from_torch(bad, s)
  with pytest.raises(pytorch.ConversionError, match=r"no 'state_dict_G'"):
    pytorch.state_from_torch({k: v for k, v in dicts.items() if k != "state_dict_G"}, s)


# ------------------------------------------------------- injected randomness

@pytest.fixture(scope="module")
def tiny_state(tiny_config, synthetic_batch):
  config = tiny_config()
  state = jax.device_get(create_train_state(config, jax.random.PRNGKey(0)))
  return state, synthetic_batch(config)


def test_injected_noise_reproduces_the_normal_path(tiny_state):
  state, batch = tiny_state
  step_fn = jax.jit(step.step_fn)
  normal, m_normal = jax.device_get(step_fn(state, batch))
  # The same draws the step makes from state.rng, passed in from outside.
  _, step_rng = jax.random.split(state.rng)
  noise = step.draw_step_noise(state.spec, step_rng, batch["image"].shape[0])
  injected, m_injected = jax.device_get(step_fn(state, batch, noise))
  assert _equal_trees(injected, normal)
  assert _equal_trees(m_injected, m_normal)
  # Different draws give a different step.
  other = step.draw_step_noise(state.spec, jax.random.PRNGKey(99), batch["image"].shape[0])
  moved, _ = jax.device_get(step_fn(state, batch, other))
  assert not np.array_equal(moved.g_params["latent"]["kernel"], normal.g_params["latent"]["kernel"])


def test_injected_spectral_vectors_drive_g(tiny_state):
  """G's SN vectors are state: a step starts from the injected u and leaves
  the power-iteration update of it (G runs twice, so it is applied twice)."""
  state, batch = tiny_state
  rng = np.random.default_rng(5)
  u0 = rng.standard_normal(state.g_state["spectral"]["latent"]["u"].shape).astype(np.float32)
  spectral = jax.tree.map(lambda x: x, state.g_state["spectral"])
  spectral["latent"]["u"] = u0
  injected = state.replace(g_state=dict(state.g_state, spectral=spectral))
  after, _ = jax.device_get(jax.jit(step.step_fn)(injected, batch))
  w = np.asarray(state.g_params["latent"]["kernel"], np.float64)   # [in, out]
  unit = lambda x: x / np.linalg.norm(x)
  u = u0.astype(np.float64)
  for _ in range(2):            # D phase and G phase; kernel fixed in between
    u = unit(unit(u @ w.T) @ w)
  np.testing.assert_allclose(after.g_state["spectral"]["latent"]["u"], u, rtol=1e-5, atol=1e-6)


def test_step_inputs_in_the_authors_layout_and_as_the_steps():
  from sgan_jax.interop import comparison
  spec = StepSpec.from_config(config_lib.reference_config())
  inputs = comparison.draw_step_inputs(np.random.default_rng(0), spec, 4, np.float32)
  images, labels, z_d, z_g, u = inputs
  assert images.shape == (4, 3, 32, 32) and images.dtype == np.float32
  assert -1 <= images.min() and images.max() <= 1
  assert labels.dtype == np.int32 and 0 <= labels.min() and labels.max() < spec.num_classes
  assert z_d.shape == z_g.shape == (4, spec.model.z_dim) and z_g.dtype == np.float32
  assert u.shape == (8, spec.model.embed_dim)
  f64 = comparison.draw_step_inputs(np.random.default_rng(0), spec, 4)   # the default
  assert [a.dtype for a in f64] == [np.float64, np.int32, np.float64, np.float64, np.float64]
  batch, noise = comparison.jax_inputs(inputs, np.float64)
  np.testing.assert_array_equal(batch["image"][2, 5, 7], images[2, :, 5, 7])   # NCHW -> NHWC
  np.testing.assert_array_equal(batch["label"], labels)
  for name, drawn in (("z_d", z_d), ("z_g", z_g), ("u", u)):
    assert noise[name].dtype == np.float64
    np.testing.assert_array_equal(noise[name], drawn)
  assert batch["image"].dtype == np.float64
  batch, noise = comparison.jax_inputs(f64)   # no dtype: as drawn
  assert noise["z_d"] is f64[2] and batch["image"].dtype == np.float64


# ------------------------------------------------ parity with the authors' code

OFFICIAL_DIR = os.environ.get("OFFICIAL_DIR")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_HAVE_TORCH = importlib.util.find_spec("torch") is not None
needs_official = pytest.mark.skipif(
    not (_HAVE_TORCH and OFFICIAL_DIR),
    reason="needs torch (pip install -e '.[interop]') and OFFICIAL_DIR=<checkout of "
           "xiao7199/structural-adversarial-objectives>")


@pytest.mark.interop
@needs_official
def test_parity_with_the_authors_step():
  proc = subprocess.run(
      [sys.executable, "-m", "sgan_jax.interop.parity", f"--official_dir={OFFICIAL_DIR}",
       "--batch=4"], capture_output=True, text=True, timeout=1200)
  print(proc.stdout[-6000:], proc.stderr[-3000:])
  assert proc.returncode == 0
  assert "PARITY PASSED" in proc.stdout


@pytest.mark.interop
@needs_official
def test_many_steps_stay_with_the_authors_code_in_float64():
  # A queue of two batches: the pointer wraps around at steps 2 and 4.
  proc = subprocess.run(
      [sys.executable, "-m", "sgan_jax.interop.parity", f"--official_dir={OFFICIAL_DIR}",
       "--batch=2", "--free_steps=5", "--queue_batches=2"],
      capture_output=True, text=True, timeout=1200)
  print(proc.stdout[-6000:], proc.stderr[-3000:])
  assert proc.returncode == 0
  assert "LONG-RUN PARITY PASSED" in proc.stdout
  rows = [l.split() for l in proc.stdout.splitlines() if l.split()[1:2] == ["sgan_jax"]]
  assert [r[2] for r in rows] == ["2/2", "0/0", "2/2", "0/0", "2/2"]
  assert all(float(x) < 1e-8 for r in rows[:2] for x in r[3:])   # before chaos grows


@pytest.mark.interop
@needs_official
def test_exported_state_loads_into_the_authors_models_and_computes_the_same():
  import torch
  from sgan_jax.interop import reference
  config = config_lib.reference_config()
  config.global_batch_size = 4
  spec = StepSpec.from_config(config)
  trainer = reference.ReferenceTrainer(reference.import_reference(OFFICIAL_DIR), spec, seed=3)
  state = jax.device_get(create_train_state(config, jax.random.PRNGKey(7)))
  dicts = pytorch.state_to_torch(state)
  to_t = lambda sd: {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
  trainer.model_d.module.load_state_dict(to_t(dicts["state_dict_D"]), strict=True)
  trainer.model_g.module.load_state_dict(to_t(dicts["state_dict_G"]), strict=True)
  x = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    _, e_torch, logits_torch, _ = trainer.model_d(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  out = spec.discriminator().apply({"params": state.d_params}, x)
  np.testing.assert_allclose(out.raw_embedding, e_torch.numpy(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out.probe_logits, logits_torch.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.interop
@needs_official
def test_reference_checkpoint_file_loads_exactly(tmp_path, reference_state):
  """A `*.pth.tar` as the reference's save_checkpoint writes it (plus its
  epoch and optimiser entries) reads back into the same state."""
  import torch
  dicts = pytorch.state_to_torch(reference_state)
  ckpt = {k: {("module." + n if k.endswith("_D") else n): torch.from_numpy(np.ascontiguousarray(v))
              for n, v in sd.items()} for k, sd in dicts.items()}
  ckpt.update(epoch=3, optimizer_D={}, optimizer_G={})
  torch.save(ckpt, tmp_path / "last.pth.tar")
  loaded = pytorch.load_reference_checkpoint(str(tmp_path / "last.pth.tar"))
  back = pytorch.state_from_torch(loaded, reference_state)
  for field in ("d_params", "d_ema_params", "g_params", "g_ema_params", "g_state", "queue_emb"):
    assert _equal_trees(getattr(back, field), getattr(reference_state, field)), field


class _RunsCode:
  """Unpickling this calls os.system: what a hostile checkpoint could do."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


@pytest.mark.interop
@pytest.mark.skipif(not _HAVE_TORCH, reason="needs torch (pip install -e '.[interop]')")
def test_a_checkpoint_that_would_run_code_is_refused_not_executed(tmp_path):
  import torch
  marker = tmp_path / "ran"
  torch.save({"state_dict_D": {}, "payload": _RunsCode(str(marker))}, tmp_path / "bad.pth.tar")
  with pytest.raises(pytorch.ConversionError, match="it could run code"):
    pytorch.load_reference_checkpoint(str(tmp_path / "bad.pth.tar"))
  assert not marker.exists()


@pytest.mark.interop
@needs_official
def test_benchmark_times_the_authors_step_in_alternating_rounds():
  proc = subprocess.run(
      [sys.executable, "-m", "sgan_jax.benchmark", "--config=configs/cifar10.py",
       "--config.global_batch_size=2", "--steps=1", "--warmup=0", "--nophases",
       "--pipeline_batches=0", "--paired_rounds=2", f"--official_dir={OFFICIAL_DIR}"],
      capture_output=True, text=True, timeout=1200, cwd=ROOT)
  print(proc.stdout[-3000:], proc.stderr[-3000:])
  assert proc.returncode == 0
  figures = dict(line.strip().split(": ", 1) for line in proc.stdout.splitlines()
                 if ": " in line)
  assert figures["paired_rounds"] == "2"
  assert len(figures["reference_round_medians_s"].split(", ")) == 2
  ratio = float(figures["step_time_ratio_to_reference"])
  assert ratio == pytest.approx(float(figures["paired_step_time_median_s"])
                                / float(figures["reference_step_time_median_s"]), rel=1e-3)
