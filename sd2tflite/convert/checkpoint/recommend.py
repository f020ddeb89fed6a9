"""What a few-step model's card recommends that its scheduler config cannot say (steps, guidance).

diffusers' scheduler configs carry the sampler and its spacing but not the number of steps or the
guidance scale a distilled model was made for. Where a family is recognisable from the checkpoint
alone, its recommendation is recorded in the manifest's scheduler record (and becomes generate's
default); --default-steps / --default-guidance at convert time still win, and so do --steps /
--guidance at generate time.
"""

from __future__ import annotations


def family_recommendation(identity: dict, scheduler_class: str | None, config: dict) -> dict:
    """{"steps", "guidance", "family"} for a recognised few-step family, else {}.

    SD-Turbo (stabilityai/sd-turbo): the SD 2.1 architecture (OpenCLIP text encoder) with
    EulerDiscreteScheduler at trailing spacing and epsilon prediction; its card: 1 step (up to 4) at
    guidance 0. LCM UNets (time_cond_proj_dim) need no entry: their LCMScheduler config names the
    sampler, and the runtime's few-step defaults (4 steps, guidance 8.5 through the embedding) are
    LatentConsistencyModelPipeline's."""
    if (identity.get("family") == "v2" and scheduler_class == "EulerDiscreteScheduler"
            and config.get("timestep_spacing") == "trailing"
            and config.get("prediction_type", "epsilon") == "epsilon"):
        return {"steps": 1, "guidance": 0.0, "family": "SD-Turbo (Euler, trailing; its card: 1 step, guidance 0)"}
    return {}
