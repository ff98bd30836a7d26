"""The authors' training step in PyTorch, with injected randomness.

`ReferenceTrainer` builds the authors' D, G and EMA copies with their own
classes and initialisation and runs `main_cls.train`'s loop body for one
batch, transcribed around their own modules and loss functions
(`model.Discriminator`, `model.Generator_model`, `utils.compute_adv_loss`,
`utils.compute_knn_loss`, `main_cls.compute_jac_sig`,
`Discriminator.dequeue_and_enqueue`), on one process (a one-member gloo group
serves their all-gather). z and the power iteration's start `u` come from the
caller. `main_cls.py` parses its command line on import, so
`compute_jac_sig` alone is loaded from its source. Needs torch.
"""
import ast
import contextlib
import os
import socket
import sys
import types

import numpy as np


def import_reference(official_dir):
  """The authors' modules and functions, imported from `official_dir`."""
  missing = [f for f in ("model.py", "utils.py", "main_cls.py", "resnet.py",
                         "generator.py", "biggan_layers.py")
             if not os.path.isfile(os.path.join(official_dir, f))]
  if missing:
    raise SystemExit(f"--official_dir={official_dir} is not a checkout of "
                     f"xiao7199/structural-adversarial-objectives (missing "
                     f"{', '.join(missing)}).")
  import torch  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.path.abspath(official_dir))
  import model as ref_model  # pylint: disable=import-outside-toplevel
  import utils as ref_utils  # pylint: disable=import-outside-toplevel
  with open(os.path.join(official_dir, "main_cls.py")) as f:
    tree = ast.parse(f.read())
  fn = [n for n in tree.body
        if isinstance(n, ast.FunctionDef) and n.name == "compute_jac_sig"]
  if not fn:
    raise SystemExit(f"{official_dir}/main_cls.py defines no compute_jac_sig")
  namespace = {"torch": torch, "F": torch.nn.functional}
  exec(compile(ast.Module(body=fn, type_ignores=[]), "main_cls.py", "exec"),  # pylint: disable=exec-used
       namespace)
  return types.SimpleNamespace(
      Discriminator=ref_model.Discriminator,
      Generator_model=ref_model.Generator_model,
      compute_adv_loss=ref_utils.compute_adv_loss,
      compute_knn_loss=ref_utils.compute_knn_loss,
      compute_jac_sig=namespace["compute_jac_sig"])


def _single_process_group():
  import torch.distributed as dist  # pylint: disable=import-outside-toplevel
  if not dist.is_initialized():
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=0, world_size=1)


@contextlib.contextmanager
def _injected_randn_like(u):
  """`compute_jac_sig` draws its start `u` with `torch.randn_like`; serve ours."""
  import torch  # pylint: disable=import-outside-toplevel
  original = torch.randn_like
  torch.randn_like = lambda like, *a, **k: u.clone().to(like.dtype)
  try:
    yield
  finally:
    torch.randn_like = original


class ReferenceTrainer:
  """The authors' models and optimisers, and their step with injected noise."""

  def __init__(self, ref, spec, seed, dtype="float32", device="cpu"):
    import torch  # pylint: disable=import-outside-toplevel
    self.torch, self.ref = torch, ref
    self.dtype = getattr(torch, dtype)
    self.device = torch.device(device)   # "cuda" for their code on a GPU
    torch.manual_seed(seed)   # the same initial values in either dtype
    args = types.SimpleNamespace(gn_channel_per_group=spec.model.channels_per_group,
                                 project_dim=spec.model.embed_dim,
                                 cov_queue_len=spec.queue_size)
    wrap = torch.nn.DataParallel   # gives the `.module` their code expects
    with contextlib.redirect_stdout(open(os.devnull, "w")):   # SN prints
      self.model_g = wrap(ref.Generator_model(latent_dim=spec.model.z_dim))
      self.moment_g = wrap(ref.Generator_model(latent_dim=spec.model.z_dim))
    self.model_d = wrap(ref.Discriminator(args, spec.num_classes))
    self.moment_d = wrap(ref.Discriminator(args, spec.num_classes))
    for online, ema in ((self.model_d, self.moment_d), (self.model_g, self.moment_g)):
      for p, q in zip(online.parameters(), ema.parameters()):
        q.data.copy_(p.data)
        q.requires_grad = False
    for m in self._models():
      m.to(self.dtype).to(self.device)
    o = spec.optim
    self.opt_d = torch.optim.AdamW(self.model_d.parameters(), lr=o.d_lr, betas=(o.b1, o.b2),
                                   eps=o.adam_eps, weight_decay=o.d_weight_decay)
    self.opt_g = torch.optim.Adam(self.model_g.parameters(), lr=o.g_lr, betas=(o.b1, o.b2),
                                  eps=o.adam_eps)
    self.momentum = o.ema_decay
    _single_process_group()

  def _models(self):
    return self.model_d, self.moment_d, self.model_g, self.moment_g

  def sync_from(self, other):
    """Takes `other`'s networks, EMAs, buffers and optimiser states (cast)."""
    for mine, theirs in zip(self._models(), other._models()):
      mine.module.load_state_dict(theirs.module.state_dict())
    self.opt_d.load_state_dict(other.opt_d.state_dict())
    self.opt_g.load_state_dict(other.opt_g.state_dict())

  def perturb(self, relative: float):
    """Scales every parameter of D, G and their EMAs by (1 + relative): a
    twin that differs from this trainer at the level of rounding."""
    with self.torch.no_grad():
      for model in self._models():
        for p in model.parameters():
          p.mul_(1 + relative)

  def take_d_parameters(self, other):
    """Copies `other`'s D parameters (not its buffers, e.g. the queue)."""
    for mine, theirs in zip(self.model_d.parameters(), other.model_d.parameters()):
      mine.data.copy_(theirs.data)

  def checkpoint(self):
    """The four state_dicts, as NumPy, in the reference checkpoint's layout."""
    np_sd = lambda m: {k: v.detach().cpu().numpy().copy()
                       for k, v in m.module.state_dict().items()}
    return {"state_dict_D": np_sd(self.model_d), "moment_state_dict_D": np_sd(self.moment_d),
            "state_dict_G": np_sd(self.model_g), "moment_state_dict_G": np_sd(self.moment_g)}

  def step(self, img, label, z_d, z_g, u, after_d_update=None, collect=True):
    """`main_cls.train`'s loop body for one batch (KNN=1, weights 3/5/20/1); `after_d_update()`
    runs between the phases. Returns (values, gradients), or None with `collect=False`."""
    torch, ref = self.torch, self.ref
    img, label, z_d, z_g, u = self._on_device(img, label, z_d, z_g, u)
    model_d, model_g = self.model_d, self.model_g
    out = {}
    for train_d, z in ((True, z_d), (False, z_g)):
      img.requires_grad = True
      norm_embed, embed, logit, _ = model_d(img)
      gen_img = model_g(z)
      if train_d:
        gen_img = gen_img.detach()
        gen_img.requires_grad = True
        gen_norm_embed, gen_embed, _, _ = model_d(gen_img)
        with _injected_randn_like(u):
          jac_sig = ref.compute_jac_sig(model_d, img, gen_img, embed, gen_embed, iter_num=1)
        jac_loss = (jac_sig - 1).pow(2).mean()
        norms = embed.norm(dim=-1)
        hinge = ((norms - 1) * (norms < 1).float()).pow(2).mean()
      else:
        gen_norm_embed, gen_embed, _, _ = model_d(gen_img)
      adv_loss, bg_feat, gen_bg_feat, knn_feat_sim, knn_rec_sim = self._adversarial_terms(
          img, gen_img, norm_embed, gen_norm_embed)
      if train_d:
        cls_loss = torch.nn.CrossEntropyLoss()(logit, label)
        loss = adv_loss + 3 * (-knn_feat_sim + knn_rec_sim) + 5 * jac_loss \
            + 20 * hinge + cls_loss
        self.opt_d.zero_grad()
        loss.backward()
        grads_d = self._grads(model_d)
        self.opt_d.step()
        if after_d_update is not None:
          after_d_update()
        out.update({
            "D(x) raw embedding e": embed, "D(x) unit embedding": norm_embed,
            "G(z_d) images": gen_img, "D(G(z_d)) unit embedding": gen_norm_embed,
            "D_ema keys of x": bg_feat, "D_ema keys of G(z_d)": gen_bg_feat,
            "sigma (2N, per sample)": jac_sig,
            "d/jsd": -adv_loss, "d/real_sim": knn_feat_sim, "d/fake_sim": knn_rec_sim,
            "d/smoothness": jac_loss, "d/norm_hinge": hinge, "d/probe_ce": cls_loss,
            "d/loss": loss})
      else:
        self.opt_g.zero_grad()
        loss = -1 * adv_loss + 3 * (-1 * knn_rec_sim)
        loss.backward()
        grads_g = self._grads(model_g)
        self.opt_g.step()
        out.update({"G(z_g) images": gen_img, "g/jsd": -adv_loss,
                    "g/real_sim": knn_feat_sim, "g/fake_sim": knn_rec_sim,
                    "g/loss": loss})
    for online, ema in ((model_d, self.moment_d), (model_g, self.moment_g)):
      for p, q in zip(online.parameters(), ema.parameters()):
        q.data = q.data * self.momentum + p.data * (1. - self.momentum)
    model_d.module.dequeue_and_enqueue(norm_embed, bg_feat)
    if not collect:
      return None
    values = {k: v.detach().cpu().numpy().astype(np.float64) for k, v in out.items()}
    return values, self.with_params(grads_d, grads_g)

  def _on_device(self, img, label, *noise):
    """The step's NumPy inputs as tensors on the trainer's device (labels as
    int64, the rest in its dtype)."""
    to = lambda a: self.torch.from_numpy(a).to(self.device, self.dtype)
    return (to(img), self.torch.from_numpy(label).to(self.device).long(),
            *(to(a) for a in noise))

  def _adversarial_terms(self, img, gen_img, norm_embed, gen_norm_embed):
    """The loop body's coarse and fine terms, in the authors' order: their
    adversarial loss, D_ema's keys of both batches, their k-NN similarities."""
    torch, ref = self.torch, self.ref
    adv_loss, _, _ = ref.compute_adv_loss(norm_embed, gen_norm_embed)
    embed_queue = self.model_d.module.queue.detach().clone()
    bg_queue = self.model_d.module.bg_queue.detach().clone()
    with torch.no_grad():
      bg_feat = torch.nn.functional.normalize(
          self.moment_d.module.encoder(torch.cat([img, gen_img])), dim=-1)
      bg_feat, gen_bg_feat = bg_feat.chunk(2)
    knn_feat_sim, knn_rec_sim = ref.compute_knn_loss(
        bg_feat, norm_embed, gen_bg_feat, gen_norm_embed, embed_queue, bg_queue, 1)
    return adv_loss, bg_feat, gen_bg_feat, knn_feat_sim, knn_rec_sim

  @staticmethod
  def _grads(model):
    """A snapshot of the parameter gradients, by state_dict name (the G
    phase's backward also adds to D's `.grad`, so take them right away)."""
    return {name: p.grad.detach().cpu().numpy().copy()
            for name, p in model.module.named_parameters()}

  def with_params(self, d_tensors, g_tensors):
    """The current checkpoint with D's and G's parameters replaced by the
    given tensors (gradients, Adam moments), buffers kept: convertible."""
    ckpt = self.checkpoint()
    ckpt["state_dict_D"].update(d_tensors)
    ckpt["state_dict_G"].update(g_tensors)
    return ckpt

  def adam_moments(self):
    """(step, checkpoint of first moments, checkpoint of second moments)."""
    def moments(model, opt, key):
      return {name: opt.state[p][key].cpu().numpy().copy()
              for name, p in model.module.named_parameters() if p in opt.state}
    if not self.opt_d.state:
      return 0, None, None
    step = int(next(iter(self.opt_d.state.values()))["step"])
    return step, *(self.with_params(moments(self.model_d, self.opt_d, k),
                                    moments(self.model_g, self.opt_g, k))
                   for k in ("exp_avg", "exp_avg_sq"))
