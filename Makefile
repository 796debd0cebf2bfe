# Lens: `make run` sets everything up and starts the service on the default
# model; `make test` runs every test. Both are idempotent.
# `make run` installs only what serving needs (requirements.txt); `make test`
# and `make bench` add the test and benchmark tools (requirements-dev.txt).

VENV    := .venv
PY      := $(VENV)/bin/python
MODEL   := models/efficientnet-lite0
LENS    := target/release/lens
# One target dir for the binary, the tests and the benches.
CARGO   := cargo

.PHONY: run setup venv dev-venv model build test test-deps bench clean

run: setup
	$(LENS) serve

setup: model build

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt
	scripts/system-deps run
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# Both files in one resolve, so a tool cannot move a serving pin.
dev-venv: $(VENV)/.installed-dev
$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	touch $@

model: $(MODEL)/model.onnx $(MODEL)/model.int8.onnx
$(MODEL)/model.onnx: $(VENV)/.installed tools/export_efficientnet_lite0.py
	$(PY) tools/export_efficientnet_lite0.py
	touch $@

# The int8 variant, rebuilt from the committed calibration ranges (no photos,
# deterministic: see tools/INT8.md). Its report goes to model.int8.json. The
# ranges fit one fp32 export; if an export ever differs, the script refuses,
# and the service still starts (fp32), while tests/engines.rs says why.
$(MODEL)/model.int8.onnx: $(MODEL)/model.onnx tools/quantize_int8.py tools/efficientnet-lite0.int8-ranges.json
	$(PY) tools/quantize_int8.py $(MODEL) --from-ranges tools/efficientnet-lite0.int8-ranges.json --bench none > /dev/null \
	  || echo "warning: no int8 variant of $(MODEL) (see above); fp32 serves as before" >&2

# system-deps first: the turbojpeg crate builds libjpeg-turbo with cmake and nasm.
build:
	scripts/system-deps run
	$(CARGO) build --release --locked

test-deps:
	scripts/system-deps test

test: setup dev-venv test-deps
	$(CARGO) test --release --locked

bench: setup dev-venv
	$(CARGO) bench --bench preprocess

clean:
	rm -rf $(VENV) $(MODEL) target
