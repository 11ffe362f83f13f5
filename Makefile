# Every set-up, test, demo and package step. `make test` works on a fresh Debian 12 machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := qgis python3-qgis qgis-providers gdal-bin python3-gdal python3-rasterio python3-matplotlib xvfb
export QT_QPA_PLATFORM ?= offscreen

DEMO_INPUT := tests/data/dubai_tile7_005_crop.tif

STAGE := build/plugins
PLUGIN_FILES = $(shell find landcover_plugin -type f -not -path '*/__pycache__/*' -not -name '*.pyc')

.PHONY: help system venv test test-unit lint bench demo stage clean

help:
	@echo "make demo   classify the sample image with the bundled model into demo_output/"
	@echo "make test   install what is missing, then lint and run all tests"
	@echo "make lint   ruff over the code"
	@echo "make bench  engine memory and throughput figures"

# apt only when a package is missing, so a second run costs nothing.
system:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: requirements.txt requirements-dev.txt | system
	[ -x $(PY) ] || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=23"
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -c "import numpy, torch, rasterio, shapely, safetensors; from osgeo import gdal; assert int(numpy.__version__.split('.')[0]) < 2"
	touch $@

venv: system $(VENV)/.installed

lint: venv
	$(PY) -m ruff check landcover_plugin scripts tests

test-unit: venv
	$(PY) -m pytest -q tests/unit

test: venv lint
	$(PY) -m pytest -q tests

# The engine on the bundled sample and model; the QGIS Processing run replaces it with the plugin.
demo: venv
	$(PY) scripts/segment.py $(DEMO_INPUT) demo_output --min-area 4 --simplify 1

# The plugin as QGIS wants it: one folder with metadata.txt inside (QGIS_PLUGINPATH=$(STAGE)).
stage:
	rm -rf $(STAGE)/landcover_plugin
	mkdir -p $(STAGE)/landcover_plugin
	for f in $(PLUGIN_FILES); do mkdir -p $(STAGE)/$$(dirname $$f) && cp $$f $(STAGE)/$$f; done
	cp metadata.txt $(STAGE)/landcover_plugin/

bench: venv
	$(PY) scripts/bench.py memory
	$(PY) scripts/bench.py throughput

clean:
	rm -rf $(VENV) dist build .pytest_cache .ruff_cache
