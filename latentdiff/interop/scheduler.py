"""diffusers scheduler configs <-> latentdiff's schedule and sampling defaults.

A diffusers ``scheduler_config.json`` carries two kinds of facts. The training facts (the betas,
``num_train_timesteps``, ``prediction_type``) are the model's: they become our ``DiffusionConfig``
(schedule name, T, parameterisation), and betas we have no name for are refused, naming them. The
sampling facts (``timestep_spacing``, ``use_karras_sigmas``, ``clip_sample``, ``thresholding``)
become the checkpoint's ``SampleConfig`` defaults. Samplers themselves are ours (any of them runs
any checkpoint), so the scheduler's class is not kept; export writes an ``EulerDiscreteScheduler``
config, the sampler that our ``euler`` equals step for step.

Known difference: Stable Diffusion's schedulers use ``leading`` spacing with ``steps_offset`` 1,
every timestep one above ours (e.g. 981, ..., 1 for 20 steps, ours 980, ..., 0). The offset is not
kept; ``convert`` says so, and ``trailing`` spacing (Lin et al. 2024) is the same in both.
"""

from __future__ import annotations

import math

from latentdiff.objectives.diffusion import DiffusionConfig

# our schedule name -> (diffusers beta_schedule, beta_start, beta_end); cosine has no beta range
BETA_SCHEDULES = {"linear": ("linear", 1e-4, 0.02), "scaled_linear": ("scaled_linear", 0.00085, 0.012),
                  "cosine": ("squaredcos_cap_v2", None, None)}
PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
TABLE_SPACINGS = ("leading", "trailing", "linspace")


def _schedule_name(config: dict) -> str:
    kind = config.get("beta_schedule", "linear")
    if config.get("trained_betas") is not None:
        raise ValueError("the scheduler config lists its own trained_betas, which latentdiff has no schedule for")
    for name, (theirs, start, end) in BETA_SCHEDULES.items():
        if kind != theirs:
            continue
        if start is None or (math.isclose(config.get("beta_start", 1e-4), start, rel_tol=1e-6)
                             and math.isclose(config.get("beta_end", 0.02), end, rel_tol=1e-6)):
            return name
        raise ValueError(f"beta_schedule {kind!r} with beta_start={config.get('beta_start')}, "
                         f"beta_end={config.get('beta_end')}: latentdiff's {name} schedule runs from {start} to {end}")
    known = ", ".join(theirs for theirs, _, _ in BETA_SCHEDULES.values())
    raise ValueError(f"beta_schedule {kind!r} has no latentdiff schedule; known: {known}")


def diffusion_from_scheduler(config: dict) -> tuple[DiffusionConfig, dict]:
    """A diffusers scheduler config -> (our DiffusionConfig, SampleConfig fields as a dict), and
    notes of what is not kept under the key ``"notes"`` of the second dict (a list of strings)."""
    prediction = config.get("prediction_type", "epsilon")
    ours = {v: k for k, v in PREDICTION_TYPES.items()}
    if prediction not in ours:
        raise ValueError(f"prediction_type {prediction!r} has no latentdiff parameterisation; "
                         f"known: {', '.join(ours)}")
    if config.get("rescale_betas_zero_snr"):
        raise ValueError("rescale_betas_zero_snr=True (Lin et al. 2024) has no latentdiff schedule")
    diffusion = DiffusionConfig(schedule=_schedule_name(config), timesteps=int(config.get("num_train_timesteps", 1000)),
                                parameterisation=ours[prediction])
    spacing = "karras" if config.get("use_karras_sigmas") else config.get("timestep_spacing", "leading")
    if spacing not in TABLE_SPACINGS + ("karras",):
        raise ValueError(f"timestep_spacing {spacing!r} has no latentdiff spacing; known: {', '.join(TABLE_SPACINGS)}")
    sample: dict = {"spacing": spacing, "notes": []}
    if config.get("thresholding"):
        sample.update(threshold="dynamic", percentile=float(config.get("dynamic_thresholding_ratio", 0.995)))
    elif config.get("clip_sample"):
        sample["threshold"] = "static"
    if spacing == "leading" and config.get("steps_offset", 0):
        sample["notes"].append(f"steps_offset={config['steps_offset']} is not kept: latentdiff's leading grid "
                               "starts at timestep 0 (use --spacing trailing for a grid both libraries share)")
    return diffusion, sample


def scheduler_from_diffusion(diffusion: DiffusionConfig, spacing: str) -> dict:
    """Our DiffusionConfig and default spacing -> an ``EulerDiscreteScheduler`` config dict
    (``from_config`` builds it)."""
    if diffusion.parameterisation not in PREDICTION_TYPES:
        raise ValueError(f"parameterisation {diffusion.parameterisation!r} has no diffusers scheduler "
                         f"(known: {', '.join(PREDICTION_TYPES)})")
    kind, start, end = BETA_SCHEDULES[diffusion.schedule]
    config = {"_class_name": "EulerDiscreteScheduler", "num_train_timesteps": diffusion.timesteps,
              "beta_schedule": kind, "prediction_type": PREDICTION_TYPES[diffusion.parameterisation],
              "timestep_spacing": spacing if spacing in TABLE_SPACINGS else "linspace",
              "use_karras_sigmas": spacing == "karras", "steps_offset": 0}
    if start is not None:
        config.update(beta_start=start, beta_end=end)
    return config
