# Every set-up, test, demo and package step. `make test` works on a fresh Debian 12 or 13 machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# g++ and python3-dev: Inductor compiles the int8 network for the CPU (landcover_plugin/core/model/quantize.py)
APT_PACKAGES := qgis python3-qgis qgis-providers gdal-bin python3-gdal python3-rasterio python3-matplotlib xvfb \
	g++ python3-dev
export QT_QPA_PLATFORM ?= offscreen

DEMO_INPUT := tests/data/dubai_tile7_005_crop.tif

STAGE := build/plugins
PLUGIN_FILES = $(shell find landcover_plugin -type f -not -path '*/__pycache__/*' -not -name '*.pyc')

VERSION := $(shell sed -n 's/^version=//p' metadata.txt)
QGIS_PYTHON ?= /usr/bin/python3
# QGIS 3 keeps its profiles under QGIS3/, QGIS 4 under QGIS4/: deploy goes to the default profile of each QGIS
# this machine has (the one whose Python bindings are installed, and any whose profiles folder exists), or
# only to PROFILE when it is given.
QGIS_DATA ?= $(HOME)/.local/share/QGIS
QGIS_MAJOR = $(shell $(QGIS_PYTHON) -c "from qgis.core import Qgis; print(Qgis.QGIS_VERSION_INT // 10000)" 2>/dev/null)
PROFILES = $(or $(PROFILE),$(sort $(if $(QGIS_MAJOR),$(QGIS_DATA)/QGIS$(QGIS_MAJOR)/profiles/default) \
	$(patsubst %/,%,$(dir $(wildcard $(QGIS_DATA)/QGIS[34]/profiles/default/.)))))
# what QGIS 3 and QGIS 4 read at start in a profile: the plugin enabled, no tips or version check
define PROFILE_INI
[PythonPlugins]\nlandcover_plugin=true\n[qgis]\ncheckVersion=false\nshowTips=false\n
endef

.PHONY: help system venv test test-unit check-cards lint bench demo demo-train stage package deploy undeploy screenshot screenshot-xyz screenshot-sentinel2 clean print-profiles

help:
	@echo "make demo   classify the sample image with the bundled model into demo_output/"
	@echo "make demo-train  adapt the bundled model to polygons over the sample, then segment and evaluate"
	@echo "make test   install what is missing, then lint and run all tests"
	@echo "make check-cards  the bundled models' held-out figures against their cards (needs ../shared/data)"
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
	$(PY) -c "import numpy, torch, rasterio, safetensors; from osgeo import gdal_array; gdal_array.OpenArray(numpy.zeros((2, 2), 'uint8'))"
	touch $@

venv: system $(VENV)/.installed

lint: venv
	$(PY) -m ruff check landcover_plugin scripts tests

test-unit: venv
	$(PY) -m pytest -q tests/unit

test: venv lint
	$(PY) -m pytest -q -rs tests

# The main job as users run it headless: landcover:segment through qgis_process, on the
# bundled sample image with the bundled model. QGIS's embedded Python gets the venv's
# packages (torch, safetensors) through PYTHONPATH.
QGIS_ENV = QGIS_PLUGINPATH=$(abspath $(STAGE)) PYTHONPATH=$(abspath $(VENV_SITE)) QT_QPA_PLATFORM=offscreen
VENV_SITE = $(VENV)/lib/python$(shell /usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')/site-packages

demo: venv stage
	rm -rf demo_output && mkdir -p demo_output
	$(QGIS_ENV) qgis_process.bin plugins enable landcover_plugin >/dev/null 2>&1 || true
	$(QGIS_ENV) qgis_process.bin run landcover:segment -- INPUT=$(abspath $(DEMO_INPUT)) \
	  OUTPUT_RASTER=$(abspath demo_output/classes.tif) OUTPUT_VECTOR=$(abspath demo_output/landcover.gpkg) \
	  OUTPUT_CONFIDENCE=$(abspath demo_output/confidence.tif) OUTPUT_REPORT=$(abspath demo_output/report.html) \
	  MIN_AREA=4 SIMPLIFY=1 2>&1 | grep -v -e '^QStandardPaths' -e '^$$'
	$(PY) scripts/area_table.py demo_output/classes.tif

# The adaptation loop headless, as a QGIS user runs it: the sample georeferenced (UTM 40N, 0.5 m),
# the committed polygons over 10% of it (EPSG:4326, class names) train a model for a few minutes
# (landcover:train), the Graphical Modeler model segments the sample with it and evaluates it
# against the sample's full mask; the bundled model is scored the same way beside it.
DEMO_TRAIN := demo_train
DEMO_MINUTES ?= 3
QGIS_RUN = $(QGIS_ENV) qgis_process.bin run
demo-train: venv stage
	rm -rf $(DEMO_TRAIN) && mkdir -p $(DEMO_TRAIN)
	$(QGIS_ENV) qgis_process.bin plugins enable landcover_plugin >/dev/null 2>&1 || true
	gdal_translate -q -a_srs EPSG:32640 -a_ullr 300000 2780000 300384 2779616 $(DEMO_INPUT) $(DEMO_TRAIN)/sample.tif
	gdal_translate -q -a_srs EPSG:32640 -a_ullr 300000 2780000 300384 2779616 -a_nodata 255 \
	  tests/data/dubai_tile7_005_crop_mask.png $(DEMO_TRAIN)/sample_mask.tif
	$(QGIS_RUN) $(abspath examples/train_segment_evaluate.model3) -- imagery=$(abspath $(DEMO_TRAIN)/sample.tif) \
	  labels=$(abspath tests/data/dubai_tile7_005_crop_polygons.geojson) class_field=class minutes=$(DEMO_MINUTES) \
	  image=$(abspath $(DEMO_TRAIN)/sample.tif) reference=$(abspath $(DEMO_TRAIN)/sample_mask.tif) \
	  train:model=$(abspath $(DEMO_TRAIN)/adapted.safetensors) segment:classes=$(abspath $(DEMO_TRAIN)/adapted.tif) \
	  2>&1 | grep -v -e '^QStandardPaths' -e '^$$' | tee $(DEMO_TRAIN)/log.txt | grep -E -e '^epoch=|Validation|Mean IoU|  [a-z/]+: IoU'
	$(QGIS_RUN) landcover:segment -- INPUT=$(abspath $(DEMO_TRAIN)/sample.tif) \
	  OUTPUT_RASTER=$(abspath $(DEMO_TRAIN)/bundled.tif) >/dev/null 2>&1
	@echo "bundled model on the same image:"
	@$(QGIS_RUN) landcover:evaluate -- INPUT=$(abspath $(DEMO_TRAIN)/bundled.tif) \
	  REFERENCE=$(abspath $(DEMO_TRAIN)/sample_mask.tif) 2>&1 | grep -E -e 'Mean IoU|  [a-z/]+: IoU'

# The plugin as QGIS wants it: one folder with metadata.txt inside (QGIS_PLUGINPATH=$(STAGE)).
stage:
	rm -rf $(STAGE)/landcover_plugin
	mkdir -p $(STAGE)/landcover_plugin
	for f in $(PLUGIN_FILES); do mkdir -p $(STAGE)/$$(dirname $$f) && cp $$f $(STAGE)/$$f; done
	cp metadata.txt $(STAGE)/landcover_plugin/

# QGIS desktop with the plugin enabled, on a virtual screen: runs the algorithm on the sample and saves
# a screenshot of the styled result into docs/. SHOT_START makes a fresh profile; SHOT_RUN, after the
# LANDCOVER_* variables of scripts/qgis_screenshot.py, runs QGIS; SHOT_END reports and shrinks $(1).
SHOT_PROFILE := build/qgis-profile
SHOT_START = rm -rf $(SHOT_PROFILE) build/screenshot && mkdir -p $(SHOT_PROFILE)/profiles/default/QGIS build/screenshot docs && \
	for v in 3 4; do printf '$(PROFILE_INI)' > $(SHOT_PROFILE)/profiles/default/QGIS/QGIS$$v.ini; done
SHOT_ENV = QGIS_PLUGINPATH=$(abspath $(STAGE)) PYTHONPATH=$(abspath $(VENV_SITE)) LANDCOVER_OUT=$(abspath build/screenshot)
SHOT_RUN = QT_QPA_PLATFORM=xcb timeout 300 xvfb-run -a -s "-screen 0 1400x900x24" qgis --profiles-path \
	$(abspath $(SHOT_PROFILE)) --nologo --noversioncheck --code $(abspath scripts/qgis_screenshot.py) \
	>build/screenshot/qgis.log 2>&1 || true
SHOT_END = cat build/screenshot/screenshot_status.txt && $(PY) -c "from PIL import Image; \
	im = Image.open('$(1)').convert('RGB'); im.quantize(256, dither=Image.Dither.NONE).save('$(1)', optimize=True)"

screenshot: venv stage
	$(SHOT_START)
	$(SHOT_ENV) LANDCOVER_INPUT=$(abspath $(DEMO_INPUT)) LANDCOVER_SHOT=$(abspath docs/qgis_screenshot.png) $(SHOT_RUN)
	$(call SHOT_END,docs/qgis_screenshot.png)

# Dynamic World on a real Sentinel-2 L1C scene (SSL4EO-S12, Punjab; CC-BY-4.0): prepared, segmented, styled.
S2_SCENE ?= ../shared/data/sentinel2/ssl4eo_s12_l1c/0000200/20200604T054639_20200604T054831_T43RCP
screenshot-sentinel2: venv stage
	$(SHOT_START)
	$(SHOT_ENV) LANDCOVER_SENTINEL2=$(abspath $(S2_SCENE)) \
	  LANDCOVER_SHOT=$(abspath docs/qgis_sentinel2_screenshot.png) $(SHOT_RUN)
	$(call SHOT_END,docs/qgis_sentinel2_screenshot.png)

# The same with the sample served as XYZ tiles from 127.0.0.1 (cut at zoom 18, Web Mercator): QGIS classifies
# the web layer over the sample's extent at 0.55 units a pixel (0.5 m at Dubai's latitude).
XYZ_DIR := build/xyz
XYZ_PORT ?= 8766
screenshot-xyz: venv stage
	$(SHOT_START)
	rm -rf $(XYZ_DIR) && mkdir -p $(XYZ_DIR)
	gdal_translate -q -a_srs EPSG:32640 -a_ullr 300000 2780000 300384 2779616 $(DEMO_INPUT) $(XYZ_DIR)/sample.tif
	$(PY) -c "import sys; sys.path.insert(0, 'tests/qgis'); from loopback import cut_tiles; \
	  l, b, r, t = cut_tiles('$(XYZ_DIR)/sample.tif', '$(XYZ_DIR)/tiles', 18); print(f'{l},{r},{b},{t}')" > $(XYZ_DIR)/extent
	$(PY) -m http.server $(XYZ_PORT) --bind 127.0.0.1 --directory $(XYZ_DIR)/tiles >/dev/null 2>&1 & echo $$! > $(XYZ_DIR)/server.pid
	$(SHOT_ENV) LANDCOVER_XYZ='http://127.0.0.1:$(XYZ_PORT)/%7Bz%7D/%7Bx%7D/%7By%7D.png' \
	  LANDCOVER_EXTENT=$$(cat $(XYZ_DIR)/extent) LANDCOVER_RESOLUTION=0.55 \
	  LANDCOVER_SHOT=$(abspath docs/qgis_xyz_screenshot.png) $(SHOT_RUN)
	kill $$(cat $(XYZ_DIR)/server.pid) 2>/dev/null || true
	$(call SHOT_END,docs/qgis_xyz_screenshot.png)

# the zip as plugins.qgis.org takes it, checked as it checks uploads (size, LICENSE, metadata, QGIS 4 maximum)
package:
	/usr/bin/python3 scripts/package_plugin.py --out dist/landcover_plugin-$(VERSION).zip

# Into the QGIS profile: the plugin, and the Python packages QGIS lacks, installed by the plugin's own installer
# (the menu's Install engine dependencies) into PROFILE/python/landcover_deps/python3.X; numpy stays QGIS's own.
# TORCH_INDEX=default keeps pip's configured index (a local wheel, a mirror); empty: PyTorch's, by GPU driver.
TORCH_INDEX ?=
deploy: stage
	@[ -n "$(strip $(PROFILES))" ] || { echo "no QGIS found (no qgis Python module, no $(QGIS_DATA)/QGIS3 or QGIS4 profiles); give PROFILE=folder" >&2; exit 1; }
	for p in $(PROFILES); do \
	  mkdir -p $$p/python/plugins && rm -rf $$p/python/plugins/landcover_plugin && \
	  cp -r $(STAGE)/landcover_plugin $$p/python/plugins/ && \
	  (cd $(STAGE) && $(QGIS_PYTHON) -m landcover_plugin.installer install --if-missing --profile $$p \
	    $(if $(TORCH_INDEX),--torch-index $(TORCH_INDEX))) && \
	  echo "deployed to $$p/python/plugins/landcover_plugin; enable it in Plugins > Manage and Install Plugins" || exit 1; \
	done

undeploy: stage
	for p in $(PROFILES); do \
	  (cd $(STAGE) && $(QGIS_PYTHON) -m landcover_plugin.installer remove --profile $$p) && \
	  rm -rf $$p/python/plugins/landcover_plugin $$p/python/landcover_deps || exit 1; \
	done

# the bundled models' held-out figures against their cards (needs ../shared/data; about two minutes)
check-cards: venv
	LANDCOVER_CARD_CHECKS=1 $(PY) -m pytest -q -rs tests/unit/test_model_cards.py

bench: venv
	$(PY) scripts/bench.py memory
	$(PY) scripts/bench.py throughput

clean:
	rm -rf $(VENV) dist build .pytest_cache .ruff_cache

print-profiles:
	@echo $(PROFILES)
