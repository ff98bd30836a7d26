"""The reference configuration (docs/method.md §5) that every file in
`configs/` starts from; loading config files by path or by name; validation;
and the configs a run keeps in its workdir.

Config files are Python and are *executed* when loaded: only load files you
trust. A workdir's configs are JSON, and are validated when read.
"""
import importlib.resources
import importlib.util
import json
import os
import re

import ml_collections
from ml_collections.config_dict import placeholder

from sgan_jax import class_subsets, config_fields, storage
from sgan_jax.errors import ConfigError  # noqa: F401  (config_lib.ConfigError)


def reference_config() -> ml_collections.ConfigDict:
  """CIFAR-10 at the authors' settings (docs/method.md §2, §5)."""
  c = ml_collections.ConfigDict()
  c.dataset = "cifar10"          # TFDS dataset name, "image_folder" (your images) or "prepared" (a prepared TFDS folder)
  c.data_dir = ""                # TFDS data_dir ("" means TFDS's default); for image_folder the folder; for prepared the dataset's folder
  c.train_split = "train"        # TFDS split to train on
  c.test_split = "test"          # TFDS split to evaluate on
  c.class_subset = ""            # keep these classes, in this order: names or label ids ("n01530575,n01531178", "3,7,9"), a file of them, or a packaged list ("imagenet10", "imagenet100"); "" keeps all
  c.max_image_pixels = 89_478_485  # image_folder: a larger image (a decompression bomb?) is a bad file; PIL's limit
  c.prepare_size = -1            # image_folder: the prepared copy's images have at most this short side (larger ones are resized down); -1: 2 x image_size; 0: kept at their size
  c.image_size = 32              # square input/output resolution: 16, 32, 64 or 128
  c.num_classes = 10             # classes of the online probe and evaluation
  c.global_batch_size = 512      # images per step over all devices and hosts
  c.num_train_steps = 97_000     # ~1000 epochs of CIFAR's 50k at batch 512
  c.seed = 0                     # seeds init, the step's noise and the input order
  c.queue_size = 10240           # K, memory-queue rows; a multiple of the batch
  c.augment = True               # flip + random resized crop on real images (docs/method.md §5)
  c.augment_on = "auto"          # "host" (loader workers), "device" (jitted, uint8 in); auto: device on GPU/TPU for fixed-size images
  c.data_workers = -1            # loader processes decoding images per host; 0: in the training process; -1: 0 on CPU, else min(16, cores - 1)
  c.nonfinite_rollbacks = 0      # on NaN/Inf: 0 stops; N > 0 rolls back to the last checkpoint and skips the batch, up to N times
  c.keep_checkpoints = 3         # newest checkpoints kept in workdir/checkpoints
  c.log_every_steps = 100        # progress line and metrics every N steps
  c.checkpoint_every_steps = 1000  # checkpoint every N steps (and at the end)
  c.sample_every_steps = 1000    # G_ema sample grid every N steps (and at the end)
  c.eval_every_steps = 5000      # feature evaluation every N steps (and at the end)

  c.model = m = ml_collections.ConfigDict()
  m.d_widths = (64, 128, 256, 512)  # D stage widths, one per halving to 4x4
  m.d_blocks_per_stage = 2       # basic blocks per D stage (ResNet-18: 2)
  m.embed_dim = 128              # width of the embedding e/z
  m.channels_per_group = 16      # GroupNorm channels per group in D
  m.g_ch = 128                   # G base width; stage widths are multiples of it
  m.g_depth = 2                  # G blocks per up-stage
  m.z_dim = 128                  # G latent size
  m.compute_dtype = "float32"    # "bfloat16": bf16 activations; parameters, optimisers and losses stay float32

  c.loss = l = ml_collections.ConfigDict()
  l.eps = 0.5                    # coding-rate distortion of gaussian_jsd
  l.knn_k = 1                    # neighbours per row in knn_similarities
  l.skip_nearest_fake = True     # fakes also skip their nearest neighbour (§3.2)
  l.renormalize_mean = True      # renormalise the mean to unit length (§3.1)
  l.jacobian_iters = 1           # power iterations for jacobian_sigma (§3.3)
  l.knn_weight = 3.0             # weight of the fine-scale (k-NN) terms
  l.smoothness_weight = 5.0      # weight of the Jacobian smoothness penalty
  l.norm_hinge_weight = 20.0     # weight of the embedding-norm hinge
  l.probe_weight = 1.0           # weight of the online probe's cross-entropy

  c.eval = e = ml_collections.ConfigDict()
  e.batch_size = 256             # feature-extraction batch; the last one is padded
  e.evaluators = ("knn", "linear", "svm", "kmeans")  # which run; ("knn",) is a cheap learning curve
  e.knn_k = 200                  # k-NN neighbours (§6)
  e.knn_temperature = 0.1        # k-NN vote weights exp(sim / temperature)
  e.knn_chunk = 512              # test rows per similarity block
  # Linear probe and SVM: full-batch L-BFGS on standardised features,
  # objective C * sum(loss) + |W|^2 / 2 (scikit-learn's C). None: C is chosen
  # from c_grid on a held-out val_fraction of the train split.
  e.linear_c = placeholder(float)  # softmax regression's C (None: chosen)
  e.svm_c = placeholder(float)     # one-vs-rest squared-hinge SVM's C (None: chosen)
  e.c_grid = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
  e.val_fraction = 0.2           # held-out part of the train split for choosing C
  e.lbfgs_max_iters = 500        # L-BFGS iterations at most, per fit
  e.lbfgs_tol = 1e-4             # ... or until the gradient norm is below this
  e.generator_metrics = True     # G_ema's classifier_fd / classifier_score (§6)
  e.classifier_epochs = 20       # ... epochs of the small classifier they use
  e.inception_weights = ""        # pytorch-fid's pt_inception-*.pth; empty skips FID/IS
  e.fid_num_samples = 10000      # G_ema images for FID/IS (the paper style: 50000)
  e.fid_cache_dir = ""           # where train-split FID statistics are cached (""=workdir)
  e.kmeans_restarts = 5          # k-means++ restarts, lowest inertia kept
  e.kmeans_iters = 300           # k-means: at most this many Lloyd steps

  c.optim = o = ml_collections.ConfigDict()
  o.d_lr = 2e-4                  # D (AdamW) learning rate, constant
  o.g_lr = 2e-4                  # G (Adam) learning rate, constant
  o.b1 = 0.5                     # Adam beta1 (both)
  o.b2 = 0.999                   # Adam beta2 (both)
  o.adam_eps = 1e-8              # Adam epsilon (both)
  o.d_weight_decay = 0.1         # AdamW decoupled weight decay on D and probe
  o.ema_decay = 0.99             # per-step EMA momentum of D_ema and G_ema
  return c


def packaged_configs():
  """{name: path} of the config files shipped with the package (the
  repository's `configs/`, installed as `sgan_jax.configs`)."""
  folder = importlib.resources.files("sgan_jax.configs")
  return {f.name[:-3]: str(f) for f in folder.iterdir()
          if f.name.endswith(".py") and not f.name.startswith("_")}


def config_file(path_or_name: str) -> str:
  """The config file `path_or_name` names: a path, or the name of a packaged
  config (`cifar10`, `digits`, ...)."""
  if os.path.isfile(path_or_name):
    return path_or_name
  packaged = packaged_configs()
  if path_or_name in packaged:
    return packaged[path_or_name]
  raise FileNotFoundError(f"config file not found: {path_or_name} (neither a "
                          f"file nor a packaged config: {', '.join(sorted(packaged))})")


def load_config(path_or_name: str) -> ml_collections.ConfigDict:
  """Executes a config file (a path or a packaged config's name, see
  `config_file`) and returns its `get_config()`."""
  path = config_file(path_or_name)
  spec = importlib.util.spec_from_file_location("_sgan_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


# ------------------------------------------------------ configs of a workdir

FIRST_CONFIG = "config.json"
# Fields added after runs were made: a workdir's config without one takes
# the value that reproduces what those runs computed (today's default where
# the field changes nothing they computed).
_ADDED_SINCE = {"augment_on": "auto", "data_workers": -1,
                "max_image_pixels": 89_478_485,
                "prepare_size": 0}   # image folders were stored at full size
_RESUME_CONFIG = re.compile(r"config_resume_(\d+)\.json")


def write_run_config(config, workdir: storage.PathLike, start_step: int):
  """Keeps the config of this start of a run: `config.json` at the first
  start, `config_resume_<step>.json` at a start that resumes at `step`.
  Written atomically; returns the path."""
  first = storage.path(workdir) / FIRST_CONFIG
  p = first if not first.exists() else first.parent / f"config_resume_{start_step}.json"
  storage.write_text(p, config.to_json(indent=2))
  return p


def _flat(config, prefix=""):
  out = {}
  for key, value in config.items():
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
  return out


def changes_since_last_start(config, workdir: storage.PathLike):
  """`["field: old -> new", ...]` for each field whose value differs from the
  config the run in `workdir` was last started with; [] when there is no
  earlier start, or its config cannot be read."""
  try:
    last = _flat(read_run_config(workdir))
  except ConfigError:
    return []
  return [f"{k}: {last.get(k)!r} -> {v!r}" for k, v in _flat(config).items()
          if last.get(k) != v]


def read_run_config(workdir: storage.PathLike) -> ml_collections.ConfigDict:
  """The config of the newest start of the run in `workdir`, validated.
  Raises ConfigError, in one line, for a missing, unreadable or invalid one."""
  folder = storage.path(workdir)
  resumes = [(int(m.group(1)), p) for p in folder.glob("config_resume_*.json")
             if (m := _RESUME_CONFIG.fullmatch(p.name))]
  p = max(resumes)[1] if resumes else folder / FIRST_CONFIG
  if not p.exists():
    raise ConfigError(f"{folder} has no {FIRST_CONFIG}: is it a training workdir?")
  try:
    stored = json.loads(p.read_text())
    if not isinstance(stored, dict):
      raise TypeError(f"it holds a JSON {type(stored).__name__}, not an object")
    if isinstance(stored.get("eval"), dict):
      # The evaluation protocol may have changed since the run started: its
      # settings take today's defaults where the run's config has none, and
      # settings that no longer exist are dropped.
      today = reference_config().eval.to_dict()
      stored["eval"] = {**today, **{k: v for k, v in stored["eval"].items() if k in today}}
    config = ml_collections.ConfigDict(stored)
  except (ValueError, TypeError) as e:   # JSONDecodeError is a ValueError
    raise ConfigError(f"{p} is not a valid config ({type(e).__name__}: {e}); "
                      f"restore it, or evaluate with another workdir") from None
  for key, value in _ADDED_SINCE.items():   # runs started before a field existed
    if key not in config:
      config[key] = value
  try:
    validate(config)
  except ConfigError as e:
    raise ConfigError(f"{p}: {e}") from None
  return config


def _check_fields(config, reference, prefix=""):
  for key in config.keys():
    if key not in reference:
      raise ConfigError(f"unknown config field '{prefix}{key}'; known fields: "
                        f"{', '.join(sorted(reference.keys()))}")
    if isinstance(reference[key], ml_collections.ConfigDict):
      if not isinstance(config[key], (dict, ml_collections.ConfigDict)):
        raise ConfigError(f"config field '{prefix}{key}' must be a group of fields "
                          f"({', '.join(sorted(reference[key].keys()))}), got "
                          f"{config[key]!r}")
      _check_fields(config[key], reference[key], f"{prefix}{key}.")
  for key in reference.keys():
    if key not in config:
      raise ConfigError(f"config is missing field '{prefix}{key}'")


def validate(config: ml_collections.ConfigDict, num_processes: int = 1,
             num_devices: int = 1) -> None:
  """Rejects configs that would fail or silently misbehave later: unknown or
  missing fields, a value of the wrong type or out of its range
  (`config_fields`), and combinations that cannot work."""
  reference = reference_config()
  _check_fields(config, reference)
  config_fields.check_types(config, reference)
  config_fields.check_ranges(config, reference)
  _check_data(config)
  b = config.global_batch_size
  if b % num_processes or b % num_devices:
    raise ConfigError(
        f"global_batch_size {b} must be positive and divisible by the number "
        f"of processes ({num_processes}) and of devices ({num_devices})")
  if config.queue_size % b:
    raise ConfigError(f"queue_size {config.queue_size} must be a positive "
                      f"multiple of global_batch_size {b}")
  _check_model(config)
  weights = config.eval.inception_weights
  if weights and not storage.exists(weights):
    raise ConfigError(f"eval.inception_weights: no file at {weights}; give the path of "
                      f"pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or '' to skip FID")
  _check_eval(config.eval, num_devices)
  if config.model.compute_dtype not in ("float32", "bfloat16"):
    raise ConfigError(f"model.compute_dtype must be 'float32' or 'bfloat16', "
                      f"got {config.model.compute_dtype!r}")
  subset = class_subsets.tokens(config.class_subset)
  if subset is not None and len(subset) != config.num_classes:
    raise ConfigError(f"class_subset keeps {len(subset)} classes but num_classes is "
                      f"{config.num_classes}; pass --config.num_classes={len(subset)}")
  if 0 < config.prepare_size < config.image_size:
    raise ConfigError(f"prepare_size {config.prepare_size} is below image_size "
                      f"{config.image_size}: training would enlarge every image; pass "
                      f"at least --config.prepare_size={config.image_size}, or 0 to "
                      f"keep the images at their size")


def _check_data(config) -> None:
  if config.dataset == "prepared" and not config.data_dir:
    raise ConfigError("dataset 'prepared' needs --config.data_dir=DIR, the folder "
                      "of a prepared TFDS dataset (the one with dataset_info.json)")
  if config.dataset == "image_folder" and not config.data_dir:
    raise ConfigError("dataset 'image_folder' needs --config.data_dir=ROOT, the "
                      "folder with ROOT/<train_split>/<class>/<image> and "
                      "ROOT/<test_split>/<class>/<image>")
  if config.augment_on not in ("auto", "host", "device"):
    raise ConfigError(f"augment_on must be 'auto', 'host' or 'device', got "
                      f"{config.augment_on!r}")


def _check_model(config) -> None:
  """The networks' own rules: a supported resolution, one D width per stage,
  widths that GroupNorm can split. Imported here, not at the top: loading or
  reading a config does not load the networks (Flax, JAX)."""
  from sgan_jax.models import discriminator, generator, layers  # pylint: disable=import-outside-toplevel
  try:
    stages = discriminator.num_stages(config.image_size)
    generator.stage_channels(config.image_size, config.model.g_ch)
  except ValueError as e:
    raise ConfigError(f"image_size: {e}") from None
  if len(config.model.d_widths) != stages:
    raise ConfigError(f"model.d_widths has {len(config.model.d_widths)} "
                      f"entries; image_size {config.image_size} needs {stages}")
  try:
    layers.check_widths(config.model.d_widths, config.model.channels_per_group)
  except ValueError as e:
    raise ConfigError(f"model.d_widths: {e}") from None


def _check_eval(e, num_devices: int) -> None:
  """The evaluation's rules; the evaluator names are those of
  `sgan_jax.evaluators` (imported here, as `_check_model`'s networks)."""
  from sgan_jax import evaluators  # pylint: disable=import-outside-toplevel
  if e.batch_size % num_devices:
    raise ConfigError(f"eval.batch_size {e.batch_size} must be "
                      f"divisible by the number of devices ({num_devices})")
  unknown = [n for n in e.evaluators if n not in evaluators.NAMES]
  if not e.evaluators or unknown or len(set(e.evaluators)) != len(e.evaluators):
    raise ConfigError(f"eval.evaluators must name distinct evaluators among "
                      f"{', '.join(evaluators.NAMES)}, got {tuple(e.evaluators)}")
