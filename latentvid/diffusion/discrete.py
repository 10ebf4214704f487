"""A pretrained image model's discrete DDPM schedule as a continuous-time latentvid schedule.

Stable Diffusion and most diffusers models were trained on N integer timesteps n = 0 .. N-1 with
``alphas_cumprod[n] = prod_{i <= n} (1 - beta_i)``, where the betas come from
``scheduler_config.json`` (``beta_start``, ``beta_end``, ``beta_schedule``,
``num_train_timesteps``). Here that table becomes a schedule on t in [0, 1]:

    t_n = n / (N - 1),        logSNR(t_n) = log(alphas_cumprod[n] / (1 - alphas_cumprod[n])),

with logSNR interpolated linearly between neighbouring training timesteps (and t clipped to
[0, 1]: the image model never saw noise levels outside its table). So every t a trainer or
sampler uses is a noise level the image model knows, the training timesteps are hit exactly,
and the network (which is conditioned on logSNR) can recover the model's fractional timestep.
Computed in float64.

The scheduler config also says what the network predicts (``prediction_type``: ``epsilon`` /
``v_prediction`` / ``sample``); it is kept here as ``prediction_type`` (``"eps"`` / ``"v"`` /
``"x0"``) so that :class:`latentvid.models.latent_diffusion.LatentDiffusion` can take its target
from the schedule. Keys missing from a file take diffusers' scheduler defaults (Stable Diffusion
1.x files have no ``prediction_type``: epsilon). Sampler-only settings of the file
(``timestep_spacing``, ``steps_offset``, ``set_alpha_to_one``, ``clip_sample``, ...) are ignored:
latentvid's samplers take any grid.

CogVideoX's ``CogVideoXDDIMScheduler`` adds two settings, both read from its file: ``snr_shift_scale``
s divides every SNR by s (alpha_bar -> alpha_bar / (s + (1 - s) alpha_bar)), and
``rescale_betas_zero_snr`` shifts and scales sqrt(alpha_bar) so that the last training timestep has
zero SNR (Lin et al., 2024), logSNR = -inf there (t = 1). On that last segment logSNR cannot be
interpolated linearly, so there alpha = sqrt(alpha_bar) is: alpha falls linearly from its value at
timestep N-2 to 0 at N-1, and :meth:`DiscreteSchedule.timestep` inverts the same map. The "time"
sampling grid then starts at zero SNR, as diffusers' trailing DDIM does; the "logsnr" and "karras"
grids start at the last finite logSNR.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import Tensor

from latentvid.diffusion.schedule import alpha_sigma, sampling_grid

BETA_SCHEDULES: tuple[str, ...] = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES: dict[str, str] = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
"""diffusers' ``prediction_type`` names -> latentvid's targets."""


def discrete_betas(num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str) -> Tensor:
    """The N betas (N,) float64 of a DDPM schedule, as diffusers / the original DDPM code define them.

    ``linear``: evenly spaced from beta_start to beta_end; ``scaled_linear`` (Stable Diffusion): the
    square of evenly spaced values from sqrt(beta_start) to sqrt(beta_end); ``squaredcos_cap_v2``:
    the cosine alpha-bar of Nichol & Dhariwal (2021), betas capped at 0.999 (beta_start / beta_end
    unused).
    """
    n = num_train_timesteps
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        i = torch.arange(n + 1, dtype=torch.float64)
        alpha_bar = torch.cos((i / n + 0.008) / 1.008 * math.pi / 2) ** 2  # (N + 1,)
        return (1.0 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")


def interp_decreasing(values: Tensor, table: Tensor) -> Tensor:
    """Fractional index of ``values`` in a strictly decreasing ``table`` (N,), by linear interpolation.

    values (...) -> (...) float64 in [0, N - 1]; values above table[0] give 0, below table[-1] give N - 1
    (so +-inf are fine). A value equal to table[n] gives exactly n.
    """
    v = values.to(torch.float64)
    asc = -table.to(v.device, torch.float64)  # increasing
    n = asc.numel()
    k = torch.searchsorted(asc, -v.contiguous(), right=True).clamp(1, n - 1)  # asc[k-1] <= -v < asc[k]
    lo, hi = asc[k - 1], asc[k]
    frac = ((-v - lo) / (hi - lo)).clamp(0.0, 1.0)
    return (k - 1).to(torch.float64) + frac


@dataclass(frozen=True)
class DiscreteSchedule:
    """An image model's discrete schedule on continuous t in [0, 1] (LightningCLI builds it from YAML).

    Args:
        pretrained: a local diffusers model folder (with ``scheduler/scheduler_config.json``) or the
            scheduler folder / config file itself; its values replace the fields below. None uses
            the fields as given.
        num_train_timesteps: N, the number of training timesteps.
        beta_start: beta of timestep 0.
        beta_end: beta of timestep N - 1.
        beta_schedule: one of ``BETA_SCHEDULES`` (Stable Diffusion 1.x / 2.x: ``"scaled_linear"``).
        prediction_type: what the image model predicts, ``"eps"``, ``"v"`` or ``"x0"``; None when
            unknown. diffusers' names (``"epsilon"``, ``"v_prediction"``, ``"sample"``) are accepted.
        snr_shift_scale: every SNR divided by this (CogVideoX: 3.0; 1.0 = none).
        rescale_betas_zero_snr: rescale to zero SNR at the last timestep (CogVideoX: true).

    The defaults are Stable Diffusion's schedule.
    """

    pretrained: str | None = None
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str | None = None
    snr_shift_scale: float = 1.0
    rescale_betas_zero_snr: bool = False

    def __post_init__(self) -> None:
        if self.pretrained is not None:
            for key, value in read_scheduler_config(self.pretrained).items():
                object.__setattr__(self, key, value)
        if self.prediction_type in PREDICTION_TYPES:
            object.__setattr__(self, "prediction_type", PREDICTION_TYPES[self.prediction_type])
        if self.prediction_type not in (None, *PREDICTION_TYPES.values()):
            raise ValueError(
                f"prediction_type must be 'eps', 'v', 'x0' (or diffusers' 'epsilon', 'v_prediction', 'sample'), "
                f"got {self.prediction_type!r}"
            )
        if int(self.num_train_timesteps) < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}")
        if self.snr_shift_scale <= 0:
            raise ValueError(f"snr_shift_scale must be > 0, got {self.snr_shift_scale}")
        betas = self.betas()
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(
                f"betas must lie in (0, 1): beta_start={self.beta_start}, beta_end={self.beta_end}, "
                f"beta_schedule={self.beta_schedule!r}"
            )

    # ---- the table ------------------------------------------------------------------------------
    def betas(self) -> Tensor:
        """(N,) float64."""
        return discrete_betas(int(self.num_train_timesteps), self.beta_start, self.beta_end, self.beta_schedule)

    def alphas_cumprod(self) -> Tensor:
        """(N,) float64: alpha_bar_n = alpha_n^2 of the training timesteps n = 0 .. N-1 (the last one 0
        with ``rescale_betas_zero_snr``)."""
        ac = torch.cumprod(1.0 - self.betas(), dim=0)
        s = float(self.snr_shift_scale)
        if s != 1.0:
            ac = ac / (s + (1.0 - s) * ac)  # SNR / s
        if self.rescale_betas_zero_snr:
            a = ac.sqrt()  # shift so the last is 0, scale so the first keeps its value
            ac = ((a - a[-1]) * (a[0] / (a[0] - a[-1]))) ** 2
        return ac

    def train_logsnrs(self) -> Tensor:
        """(N,) float64, strictly decreasing: logSNR of the training timesteps (-inf last for zero terminal SNR)."""
        ac = self.alphas_cumprod()
        return torch.log(ac) - torch.log1p(-ac)

    def _finite(self) -> tuple[Tensor, bool]:
        """The table's finite part (N or N-1,) and whether a zero-SNR timestep follows it."""
        table = self.train_logsnrs()
        zero = bool(torch.isneginf(table[-1]))
        return (table[:-1] if zero else table), zero

    # ---- continuous time ------------------------------------------------------------------------
    def logsnr(self, t: Tensor) -> Tensor:
        """t (...) in [0, 1] -> logSNR (...) in t's dtype (float32 for integer t)."""
        finite, zero = self._finite()
        table = self.train_logsnrs().to(t.device)
        n = table.numel()
        pos = t.to(torch.float64).clamp(0.0, 1.0) * (n - 1)  # fractional timestep
        k = pos.floor().clamp(max=n - 2).long()
        w = pos - k
        if zero:  # last segment: alpha linear down to 0 (logSNR of linearly mixed finite neighbours elsewhere)
            last = k == n - 2
            a = torch.sigmoid(finite[-1]).sqrt().to(t.device) * (1.0 - w)
            lam_last = 2.0 * torch.log(a) - torch.log1p(-a.square())
            k = torch.where(last, k - 1, k)  # keep the linear formula off the -inf entry
            w_lin = torch.where(last, torch.ones_like(w), w)
            lam = torch.where(last, lam_last, table[k] * (1.0 - w_lin) + table[k + 1] * w_lin)
        else:
            lam = table[k] * (1.0 - w) + table[k + 1] * w
        return lam.to(t.dtype if t.is_floating_point() else torch.float32)

    def alpha_sigma(self, logsnr: Tensor) -> tuple[Tensor, Tensor]:
        """logSNR (...) -> (alpha, sigma): a DDPM table is variance preserving (alpha^2 = alphas_cumprod)."""
        return alpha_sigma(logsnr)

    def timestep(self, logsnr: Tensor) -> Tensor:
        """logSNR (...) -> the image model's fractional timestep (...) float64 in [0, N - 1]."""
        finite, zero = self._finite()
        n = finite.numel()
        pos = interp_decreasing(logsnr, finite)
        if not zero:
            return pos
        # below the last finite logSNR: alpha = alpha_{N-2} (1 - w) on the zero-SNR segment
        lam = logsnr.to(torch.float64)
        a_last = torch.sigmoid(finite[-1]).sqrt().to(lam.device)
        w = (1.0 - torch.sigmoid(lam).sqrt() / a_last).clamp(0.0, 1.0)
        return torch.where(lam < finite[-1].to(lam.device), (n - 1) + w, pos)

    def t_from_logsnr(self, logsnr: Tensor) -> Tensor:
        """Inverse of :meth:`logsnr`: logSNR (...) -> t (...) in [0, 1] (clipped at the table's ends)."""
        t = self.timestep(logsnr) / (int(self.num_train_timesteps) - 1)
        return t.to(logsnr.dtype if logsnr.is_floating_point() else torch.float32)

    def sampling_logsnrs(self, steps: int, spacing: str = "time") -> Tensor:
        """(steps + 1,) logSNRs from t = 1 (timestep N - 1) towards t = 0, the last one +inf (a clean
        sample); ``spacing`` one of ``SPACINGS`` (:func:`~latentvid.diffusion.schedule.sampling_grid`:
        ``"karras"`` is diffusers' ``use_karras_sigmas`` grid of this table)."""
        finite, zero = self._finite()
        if zero and spacing != "time":  # these grids need finite ends: start at the last finite timestep
            return sampling_grid(lambda t: self.logsnr(t).clamp(min=float(finite[-1])), steps, spacing,
                                 logsnr_range=None)
        # the table's own ends, as diffusers' use_karras_sigmas: a trained table is already the useful range
        return sampling_grid(self.logsnr, steps, spacing, logsnr_range=None)

    def logsnrs_at(self, timesteps: Tensor) -> Tensor:
        """logSNR (K,) float64 of integer training timesteps (K,), e.g. a diffusers scheduler's ``timesteps``
        (a grid that takes exactly its steps: ``torch.cat([schedule.logsnrs_at(ts), +inf])``)."""
        return self.train_logsnrs()[timesteps.long().cpu()]


# what diffusers' DDPM / DDIM / PNDM schedulers assume for keys a config file leaves out
_DIFFUSERS_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
                       "prediction_type": "epsilon", "snr_shift_scale": 1.0, "rescale_betas_zero_snr": False}
_CASTS = {"num_train_timesteps": int, "beta_start": float, "beta_end": float, "beta_schedule": str,
          "prediction_type": str, "snr_shift_scale": float, "rescale_betas_zero_snr": bool}
assert set(_CASTS) == {f.name for f in fields(DiscreteSchedule)} - {"pretrained"}


def _config_file(path: str) -> Path:
    """The scheduler_config.json of a model folder, a scheduler folder, or the file itself."""
    p = Path(path).expanduser()
    for candidate in (p, p / "scheduler_config.json", p / "scheduler" / "scheduler_config.json"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no scheduler config at {p}: expected {p / 'scheduler' / 'scheduler_config.json'} (a diffusers "
        f"model folder, e.g. a local copy of a Stable Diffusion repository) or a scheduler_config.json file"
    )


def read_scheduler_config(path: str) -> dict:
    """The schedule fields of a diffusers ``scheduler_config.json`` (see :class:`DiscreteSchedule`).

    Raises ValueError naming the file and the setting when it describes a schedule this class
    cannot represent (explicit ``trained_betas``).
    """
    file = _config_file(path)
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"{file} must hold a JSON object")
    if config.get("trained_betas") is not None:
        raise ValueError(f"{file}: explicit 'trained_betas' are not supported; use beta_start/beta_end/beta_schedule")
    config = {**_DIFFUSERS_DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    out = {}
    for key, cast in _CASTS.items():
        if config.get(key) is not None:
            try:
                out[key] = cast(config[key])
            except (TypeError, ValueError) as err:
                raise ValueError(f"{file}: bad value for {key!r}: {config[key]!r} ({err})") from err
    return out
