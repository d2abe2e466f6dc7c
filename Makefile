# Setup, demo and tests on a fresh Debian machine (Python 3.11, no GPU needed).
# TORCH names the PyTorch build to install first; a GPU machine can pass its own,
# e.g. `make demo TORCH="torch==2.13.0 --index-url <your CUDA wheel index>"`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup data demo test bench bench-fmnist-samplers bench-latent autoencoders clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)   # first, so nothing below pulls another torch build
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/.installed data

data:
	@if [ -z "$$LATENTDIFF_FMNIST" ] && [ ! -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then \
		echo "installing Debian package dataset-fashion-mnist"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
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

clean:
	rm -rf $(VENV) demo_out .pytest_cache
