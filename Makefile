# Setup, demo and tests on a fresh Debian machine (Python 3.11, no GPU needed).
# TORCH names the PyTorch build to install first; a GPU machine can pass its own,
# e.g. `make demo TORCH="torch==2.13.0 --index-url <your CUDA wheel index>"`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup data browser demo test bench bench-fmnist-samplers bench-latent autoencoders text-to-image controlnet one-step performance bench-guidance clean likelihood cascade unclip recaption backbones transformers-vs-diffusers lora scale-out serve-latency

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)   # first, so nothing below pulls another torch build
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/.installed data browser

data:
	@if [ -z "$$LATENTDIFF_FMNIST" ] && [ ! -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then \
		echo "installing Debian package dataset-fashion-mnist"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	fi

# Debian's chromium for the web page's browser test (Playwright drives it; its own browser download needs
# a network we do not have); where apt fails, tests/test_serve_browser.py skips and says so
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
		echo "installing Debian package chromium (for tests/test_serve_browser.py)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium \
			|| echo "warning: chromium not installed; the browser test will be skipped"; \
	fi

demo: setup
	$(BIN)/latentdiff demo --out demo_out

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/quality_vs_diffusers.py --json benchmarks/results/quality_vs_diffusers.json
	$(BIN)/python benchmarks/samplers_vs_diffusers.py --nfe 5 8 10 20 25 \
		--json benchmarks/results/samplers_vs_diffusers.json --png docs/samplers_vs_diffusers.png

# needs the demo's checkpoint (make demo)
bench-fmnist-samplers: setup
	$(BIN)/python benchmarks/fmnist_fd_vs_nfe.py demo_out/checkpoint --json benchmarks/results/fmnist_fd_vs_nfe.json

# the two autoencoder presets (about 15 minutes each on 2 CPU cores), then their test-split numbers
autoencoders: setup
	$(BIN)/latentdiff train --preset fmnist-vae --out runs/fmnist-vae
	$(BIN)/latentdiff train --preset fmnist-vqvae --out runs/fmnist-vqvae
	$(BIN)/latentdiff eval runs/fmnist-vae/checkpoint --n 2000 --json benchmarks/results/fmnist_vae.json
	$(BIN)/latentdiff eval runs/fmnist-vqvae/checkpoint --n 2000 --json benchmarks/results/fmnist_vqvae.json

# pixel vs latent DDPM at equal wall time (2 x 15 minutes of training; needs runs/fmnist-vae)
bench-latent: setup
	$(BIN)/latentdiff train --preset fmnist-vae --out runs/fmnist-vae
	$(BIN)/python benchmarks/latent_vs_pixel.py --minutes 15 --json benchmarks/results/latent_vs_pixel.json \
		--png docs/latent_vs_pixel.png

# text-to-image: the shapes autoencoder (21 min), shapes-t2i (30 min), fmnist-t2i (12 min), then their numbers
text-to-image: setup
	$(BIN)/latentdiff train --preset shapes-vae --out runs/shapes-vae
	$(BIN)/latentdiff train --preset shapes-t2i --out runs/shapes-t2i
	$(BIN)/latentdiff eval adherence runs/shapes-t2i/checkpoint --n-per-prompt 16 --guidance 4 \
		--json benchmarks/results/shapes_t2i_adherence_w4.json
	$(BIN)/latentdiff eval adherence runs/shapes-t2i/checkpoint --prompts benchmarks/shapes_figure_prompts.txt \
		--n-per-prompt 8 --guidance 4 --png docs/shapes_t2i_prompts.png
	$(BIN)/latentdiff eval adherence runs/shapes-t2i/checkpoint --n-per-prompt 16 --guidance 1 \
		--json benchmarks/results/shapes_t2i_adherence_w1.json
	$(BIN)/latentdiff train --preset fmnist-t2i --out runs/fmnist-t2i
	$(BIN)/latentdiff eval runs/fmnist-t2i/checkpoint --n 1000 --json benchmarks/results/fmnist_t2i.json

# one-step students of the demo model (make demo): DMD and DMD2 (45 min each on 2 CPU cores), then
# the teacher at 50/20/10/4/1 NFE against them (FD-EffNet n=2000, class accuracy, images/s)
one-step: setup
	$(BIN)/latentdiff train --preset fmnist-dmd --out runs/fmnist-dmd
	$(BIN)/latentdiff train --preset fmnist-dmd2 --out runs/fmnist-dmd2
	$(BIN)/python benchmarks/one_step.py --teacher demo_out/checkpoint --student runs/fmnist-dmd/checkpoint \
		--student2 runs/fmnist-dmd2/checkpoint --n 2000 --json benchmarks/results/one_step.json --png docs/one_step.png

# latentdiff vs diffusers on the same U-Nets, bench-S and bench-L (DESIGN.md section 6; about 25 min
# on 2 CPU cores): README, Performance
performance: setup
	$(BIN)/python benchmarks/unet_vs_diffusers.py --config S,L --profile \
		--json 'benchmarks/results/unet_vs_diffusers_{config}.json' --png docs/performance.png
	$(BIN)/python benchmarks/unet_vs_diffusers.py --config S --precision fp32 --diffusers-channels-last \
		--json benchmarks/results/unet_vs_diffusers_S_diffusers_cl.json

# ControlNet: edges and masks on shapes (30 min each), edges on Fashion-MNIST (20 min), over the
# frozen text-to-image models of `make text-to-image`, then their control fidelity and FD
controlnet: setup
	$(BIN)/latentdiff train --preset shapes-controlnet-edges --out runs/shapes-cn-edges
	$(BIN)/latentdiff eval control runs/shapes-t2i/checkpoint --controlnet runs/shapes-cn-edges/checkpoint \
		--n 500 --seed 0 --json benchmarks/results/shapes_controlnet_edges.json --png docs/shapes_controlnet_edges.png
	$(BIN)/latentdiff train --preset shapes-controlnet-mask --out runs/shapes-cn-mask
	$(BIN)/latentdiff eval control runs/shapes-t2i/checkpoint --controlnet runs/shapes-cn-mask/checkpoint \
		--n 500 --seed 0 --json benchmarks/results/shapes_controlnet_mask.json --png docs/shapes_controlnet_mask.png
	$(BIN)/latentdiff train --preset fmnist-controlnet-edges --out runs/fmnist-cn-edges
	$(BIN)/latentdiff eval control runs/fmnist-t2i/checkpoint --controlnet runs/fmnist-cn-edges/checkpoint \
		--n 500 --seed 0 --json benchmarks/results/fmnist_controlnet_edges.json --png docs/fmnist_controlnet_edges.png

# guidance scale 1..10 against adherence and FD-EffNet (needs runs/shapes-t2i)
bench-guidance: setup
	$(BIN)/python benchmarks/guidance_sweep.py runs/shapes-t2i/checkpoint --n-fd 500 \
		--json benchmarks/results/guidance_sweep.json --png docs/guidance_sweep.png

likelihood: setup
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/likelihood.py --minutes 10 --tol 1e-3 --ode-minutes 12 \
		--extra fmnist-iddpm-fixed=fmnist-iddpm:diffusion.learned_variance=false \
		--json benchmarks/results/likelihood.json

# the cascade against one 64 px model at equal training time, the augmentation ablation, photos (~2 h)
cascade: setup
	$(BIN)/python benchmarks/cascade.py --minutes 40 --photo-minutes 25 \
		--json benchmarks/results/cascade.json --png docs/cascade_aug_sweep.png

# unCLIP (prior + decoder) against the Imagen-style pixel model at equal training time, the prior's
# value, Fashion-MNIST variations; trains the CLIP models first where missing (~1.5 h)
unclip: setup
	$(BIN)/python benchmarks/unclip.py --minutes 30 --vary-guidance 3 --json benchmarks/results/unclip.json

# DALL·E 3 recaptioning: captioner, recaptioned training set, alt / 95% blend / exact captions and the
# blend ablation at equal training time, prompt upsampling (~1.5 h)
recaption: setup
	$(BIN)/python benchmarks/recaption.py --minutes 15 --json benchmarks/results/recaption.json

# U-Net, DiT and MMDiT (rectified flow) on shapes text-to-image at equal wall time, with the adherence
# curve; the Fashion-MNIST DiT against the demo U-Net (~1.2 h)
backbones: setup
	$(BIN)/python benchmarks/backbones.py --minutes 20 --curve 10,20 --json benchmarks/results/backbones.json \
		--png docs/backbones_curve.png

# our DiT / MMDiT against diffusers' DiTTransformer2DModel / SD3Transformer2DModel on the same weights
transformers-vs-diffusers: setup
	$(BIN)/python benchmarks/transformers_vs_diffusers.py --json benchmarks/results/transformers_vs_diffusers.json

# LoRA on a new concept (a cross) over the best shapes model (runs/backbones/unet-flow, trained first when
# missing): 100 images, under 10 minutes of fine-tuning, adherence new / old, adapter size (~20 min)
lora: setup
	$(BIN)/python benchmarks/lora_concept.py --json benchmarks/results/lora_concept.json

# shard stream vs in-memory steps/s, gradient checkpointing memory, 200k shapes at 64 px (more than the
# process's memory limit) as shards trained under RLIMIT_AS (~20 min)
scale-out: setup
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/scale_out.py --json benchmarks/results/scale_out.json

# latentdiff serve's overhead: one 32x32 image at 20 steps through the HTTP API vs generate() (~1 min)
serve-latency: setup
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/serve_latency.py --json benchmarks/results/serve_latency.json

clean:
	rm -rf $(VENV) demo_out .pytest_cache
