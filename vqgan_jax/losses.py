"""taming's VQGAN objective (VQLPIPSWithDiscriminator) as pure JAX functions.

Generator (autoencoder) loss, with x, x_rec float32[B, H, W, C] in [-1, 1]:
    nll   = mean|x - x_rec| + perceptual_weight * mean_b LPIPS(x, x_rec)
    g     = -mean D(x_rec)
    lam   = clip(|dnll/dW| / (|dg/dW| + 1e-4), 0, 1e4) * disc_weight     (W: decoder conv_out)
    loss  = nll + lam * adopt_weight(disc_factor, step, disc_start) * g + codebook_weight * q
Discriminator loss: adopt_weight(disc_factor, ...) * hinge(D(x), D(sg[x_rec])) (or vanilla).
`disc_start` counts batches, as PyTorch Lightning 1.0 did.
"""

import dataclasses
from typing import Callable, Dict, Tuple

import jax
import jax.numpy as jnp

from vqgan_jax.nn.discriminator import hinge_d_loss, vanilla_d_loss

D_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """taming's VQLPIPSWithDiscriminator arguments (pixelloss_weight is unused there too)."""
  disc_start: int = 0
  codebook_weight: float = 1.0
  disc_factor: float = 1.0
  disc_weight: float = 1.0
  perceptual_weight: float = 1.0
  disc_loss: str = "hinge"
  lpips_dropout_in_train: bool = True
  adaptive_weight: bool = True  # False: lam = disc_weight (a fixed GAN weight)


def adopt_weight(weight, step, threshold):
  """`weight` once `step >= threshold`, else 0 (taming's adopt_weight)."""
  return jnp.where(step >= threshold, jnp.asarray(weight, jnp.float32), 0.0)


def adaptive_weight(nll_grad, g_grad, disc_weight: float):
  """clip(|nll_grad| / (|g_grad| + 1e-4), 0, 1e4) * disc_weight, without gradient."""
  ratio = jnp.linalg.norm(nll_grad.ravel()) / (jnp.linalg.norm(g_grad.ravel()) + 1e-4)
  return jax.lax.stop_gradient(jnp.clip(ratio, 0.0, 1e4) * disc_weight)


def reconstruction_losses(x, x_rec, lpips_fn: Callable, perceptual_weight: float):
  """(nll, rec_l1, p_loss): nll = mean|x - x_rec| + perceptual_weight * mean LPIPS."""
  x_rec = x_rec.astype(jnp.float32)
  l1 = jnp.mean(jnp.abs(x.astype(jnp.float32) - x_rec))
  if perceptual_weight > 0:
    p = jnp.mean(lpips_fn(x, x_rec))
  else:
    p = jnp.zeros((), jnp.float32)
  return l1 + perceptual_weight * p, l1, p


def generator_loss(x, features, conv_out_params, conv_out_fn: Callable, codebook_loss,
                   lpips_fn: Callable, disc_fn: Callable, step, cfg: LossConfig,
                   with_adaptive_weight: bool = True) -> Tuple[jax.Array, Dict]:
  """The autoencoder's loss and taming's log entries.

  Args:
    x: float32[B, H, W, C] inputs.
    features: the decoder's conv_out input; conv_out_fn(features, kernel, bias) -> x_rec.
    conv_out_params: {"kernel", "bias"} of conv_out (W for the adaptive weight).
    codebook_loss: scalar from the quantizer.
    lpips_fn: (x, x_rec) -> float32[B]. disc_fn: x_rec -> (logits, aux).
    step: the batch counter (int scalar, may be traced).
    with_adaptive_weight: False reproduces taming's no-grad (validation) path: d_weight 0.
  Returns:
    (loss, logs) with logs holding x_rec, disc_aux and taming's scalar keys.
  """
  kernel, bias = conv_out_params["kernel"], conv_out_params["bias"]
  x_rec, rec_vjp = jax.vjp(lambda k: conv_out_fn(features, k, bias), kernel)
  nll_fn = lambda r: reconstruction_losses(x, r, lpips_fn, cfg.perceptual_weight)
  (nll, l1, p), nll_vjp = jax.vjp(lambda r: nll_fn(r), x_rec)
  def g_fn(r):
    logits, aux = disc_fn(r)
    return -jnp.mean(logits.astype(jnp.float32)), aux
  g_loss, g_vjp, disc_aux = jax.vjp(g_fn, x_rec, has_aux=True)
  if with_adaptive_weight and cfg.adaptive_weight:
    one = jnp.ones((), jnp.float32)
    zero = jnp.zeros((), jnp.float32)
    nll_grad = rec_vjp(nll_vjp((one, zero, zero))[0])[0]
    g_grad = rec_vjp(g_vjp(one)[0])[0]
    d_weight = adaptive_weight(nll_grad, g_grad, cfg.disc_weight)
  elif with_adaptive_weight:
    d_weight = jnp.asarray(cfg.disc_weight, jnp.float32)
  else:
    d_weight = jnp.zeros((), jnp.float32)
  disc_factor = adopt_weight(cfg.disc_factor, step, cfg.disc_start)
  loss = nll + d_weight * disc_factor * g_loss + cfg.codebook_weight * codebook_loss
  logs = {"total_loss": loss, "quant_loss": codebook_loss, "nll_loss": nll, "rec_loss": nll,
          "l1_loss": l1, "p_loss": p, "d_weight": d_weight, "disc_factor": disc_factor,
          "g_loss": g_loss}
  return loss, {"scalars": logs, "x_rec": x_rec, "disc_aux": disc_aux}


def discriminator_loss(logits_real, logits_fake, step, cfg: LossConfig):
  """(loss, logs): disc_factor * hinge/vanilla loss and the mean logits."""
  disc_factor = adopt_weight(cfg.disc_factor, step, cfg.disc_start)
  real, fake = logits_real.astype(jnp.float32), logits_fake.astype(jnp.float32)
  loss = disc_factor * D_LOSSES[cfg.disc_loss](real, fake)
  return loss, {"disc_loss": loss, "logits_real": jnp.mean(real), "logits_fake": jnp.mean(fake)}
