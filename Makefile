# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create or refresh .venv first; a second run installs nothing new.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Extra flags for `python -m venv`, e.g. VENV_FLAGS=--system-site-packages to
# reuse a detectron2 built from source in the base environment.
VENV_FLAGS ?=
STAMP := $(VENV)/.soco_d2-installed
PYTEST_ARGS ?=

# `make demo METHOD=...` picks the pretraining method (configs/demo/<config>.yaml).
METHOD ?= soco
DEMO_CONFIG_soco := soco_r50_fpn
DEMO_CONFIG_soco_c4 := soco_r50_c4
DEMO_CONFIG_soco_star := soco_star_r50_fpn
DEMO_CONFIG_detcon := detcon_b_r50_fpn
DEMO_CONFIG_detcon_c5 := detcon_b_r50
DEMO_CONFIG_detcon_s := detcon_s_r50
DEMO_CONFIG_densecl := densecl_r50
DEMO_CONFIG_byol := byol_r50
DEMO_CONFIG_mocov2 := mocov2_r50
PRETRAIN_CONFIG = $(DEMO_CONFIG_$(METHOD))
# Files the demo steps hand to each other.
DEMO_BOXES := proposals/demo_images_ss.pcache
DEMO_MASKS := proposals/demo_images_fh.pcache
DEMO_PRETRAIN_DIR = output/demo/pretrain/$(PRETRAIN_CONFIG)
DEMO_CHECKPOINT = $(DEMO_PRETRAIN_DIR)/model_final.pth
DEMO_CONVERTED = $(DEMO_PRETRAIN_DIR)/model_final_d2.pkl
DEMO_TRANSFER_DIR := output/demo/transfer
DEMO_PROBE_DIR := output/demo/probe

.PHONY: venv demo test test-slow docs bench clean-demo

venv: $(STAMP)

# Refreshed whenever the pins, the package metadata or the installer change.
$(STAMP): constraints.txt setup.py tools/install_detectron2.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PIP) install --quiet --disable-pip-version-check -c constraints.txt "pip>=23" setuptools wheel
	$(PIP) install --quiet --disable-pip-version-check -c constraints.txt torch torchvision
	$(PY) tools/install_detectron2.py --constraints constraints.txt
	$(PIP) install --quiet --disable-pip-version-check --no-build-isolation -c constraints.txt -e ".[test,cityscapes]"
	$(PIP) install --quiet --disable-pip-version-check --no-deps -c constraints.txt lvis  # --no-deps: see setup.py (why there is no "lvis" extra)
	$(PY) -m soco_d2.compat
	@touch $(STAMP)

test: venv
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc

test-slow: venv
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

# The flag tables at the end of docs/tools/*.md, from the tools' parsers (after changing a flag).
docs: venv
	$(PY) -m soco_d2.cli_docs

# The whole pipeline on the embedded demo data, on CPU:
# proposals -> pretrain (METHOD, probed every 10 iterations) -> loss/probe plot -> convert
# -> probes and transfer of the pretrained weights and of random init, side by side.
demo: venv
	@test -n "$(PRETRAIN_CONFIG)" || { echo "unknown METHOD=$(METHOD); one of: soco soco_c4 soco_star detcon detcon_c5 detcon_s densecl byol mocov2"; exit 2; }
	@echo "== 1/5 precompute proposals and masks for demo_images"
	$(PY) tools/precompute_proposals.py --dataset demo_images --method selective_search --output $(DEMO_BOXES) --workers 2 --overwrite
	$(PY) tools/precompute_proposals.py --dataset demo_images --method felzenszwalb --output $(DEMO_MASKS) --workers 2 --overwrite
	@echo "== 2/5 pretrain $(METHOD) on demo_images ($(PRETRAIN_CONFIG)), object-level probes every 10 iterations"
	$(PY) tools/pretrain_net.py --overwrite --config-file configs/demo/$(PRETRAIN_CONFIG).yaml OUTPUT_DIR $(DEMO_PRETRAIN_DIR)
	$(PY) tools/plot_metrics.py $(DEMO_PRETRAIN_DIR)/metrics.json
	@echo "== 3/5 convert the checkpoint to the detectron2 model zoo format"
	$(PY) tools/convert_to_d2.py $(DEMO_CHECKPOINT) $(DEMO_CONVERTED) --include all \
	    --verify-config configs/transfer/demo_mask_rcnn_R_50_FPN.yaml
	@echo "== 4/5 probes: object-level kNN / linear on demo_instances_val (memory demo_instances_train)"
	$(PY) tools/probe_net.py --overwrite --config-file configs/demo/$(PRETRAIN_CONFIG).yaml \
	    --weights $(DEMO_CONVERTED) --label "$(METHOD)" OUTPUT_DIR $(DEMO_PROBE_DIR)/$(PRETRAIN_CONFIG)
	$(PY) tools/probe_net.py --overwrite --config-file configs/demo/$(PRETRAIN_CONFIG).yaml \
	    --weights "" --label "random init" OUTPUT_DIR $(DEMO_PROBE_DIR)/random_init
	@echo "== 5/5 transfer: Mask R-CNN R50-FPN on demo_instances_train -> demo_instances_val"
	$(PY) tools/transfer_net.py --overwrite --config-file configs/transfer/demo_mask_rcnn_R_50_FPN.yaml \
	    MODEL.WEIGHTS $(DEMO_CONVERTED) OUTPUT_DIR $(DEMO_TRANSFER_DIR)/$(PRETRAIN_CONFIG)
	$(PY) tools/transfer_net.py --overwrite --config-file configs/transfer/demo_mask_rcnn_R_50_FPN.yaml \
	    OUTPUT_DIR $(DEMO_TRANSFER_DIR)/random_init
	@echo "== demo_instances_val: AP after the same fine-tune and object-level probe accuracy (region_*), from $(METHOD) pretraining and from random init"
	@$(PY) tools/transfer_net.py --compare $(DEMO_TRANSFER_DIR)/$(PRETRAIN_CONFIG) $(DEMO_TRANSFER_DIR)/random_init \
	    --probes $(DEMO_PROBE_DIR)/$(PRETRAIN_CONFIG) $(DEMO_PROBE_DIR)/random_init --labels "$(METHOD)" "random init"
	@echo "loss and probe curves of the pretraining: $(DEMO_PRETRAIN_DIR)/loss_curve.png"

bench: venv
	@ls bench/*.py >/dev/null 2>&1 || { echo "no benchmarks yet"; exit 0; }
	@for f in bench/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean-demo:
	rm -rf output/demo proposals/demo_*
