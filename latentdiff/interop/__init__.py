"""Other libraries' checkpoint layouts in and out of latentdiff's (DESIGN.md section 2).

* ``unet`` (+ ``unet_config``): diffusers UNet2DModel / UNet2DConditionModel and the original LDM U-Net;
* ``vae``: diffusers AutoencoderKL and LDM's ``first_stage_model``;
* ``controlnet``: diffusers ControlNetModel and the original ``control_model``;
* ``diffusers_transformers``: diffusers' DiT and SD3 transformers (import);
* ``scheduler``: diffusers scheduler configs <-> our schedules and sampling defaults;
* ``single_file``: the original Stable Diffusion 1.x single file, split into parts and joined;
* ``folders``: diffusers model and pipeline folders on disk; ``convert``: ``latentdiff convert``;
* ``lora``: LoRA adapters through peft;
* ``keys``: the strict renaming every map goes through (no key silently dropped).
"""
