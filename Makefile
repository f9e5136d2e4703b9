# Every target sets itself up on a fresh machine: it creates .venv and installs what it needs.
PY ?= python3
FAISS ?= cpu          # or gpu (faiss-gpu); never both
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(strip $(FAISS))
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: serve test lint-imports proto bench clean browser pacs demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[server,$(strip $(FAISS)),pacs,web,ray,dev]'
	rm -f $(VENV)/.installed-*
	touch $@

serve: $(STAMP)
	$(BIN)/simdex serve --data ./simdex-data --host 127.0.0.1 --port 50051

# The import rules of docs/architecture.md (import-linter, contracts in pyproject.toml), then every test.
test: lint-imports browser pacs
	$(BIN)/python -m pytest -q

# The lookup page is tested in a real headless browser: Debian's chromium (installed when missing and apt is usable).
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; } || \
	    echo "note: chromium could not be installed; the lookup page's browser tests will be skipped"; }

# The DICOMweb tests run a real PACS: Debian's Orthanc and its DICOMweb plugin (installed when missing and apt is
# usable). The package's own service (HTTP 8042, DICOM 4242) is stopped and disabled: the tests start their own.
ORTHANC_DICOMWEB := /usr/share/orthanc/plugins/libOrthancDicomWeb.so
pacs:
	@test -x /usr/sbin/Orthanc -a -e $(ORTHANC_DICOMWEB) || \
	  { export DEBIAN_FRONTEND=noninteractive; \
	    { apt-get install -y -qq --no-install-recommends orthanc orthanc-dicomweb >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && \
	        apt-get install -y -qq --no-install-recommends orthanc orthanc-dicomweb >/dev/null 2>&1; }; } && \
	    { invoke-rc.d orthanc stop >/dev/null 2>&1; update-rc.d orthanc disable >/dev/null 2>&1; \
	      systemctl disable --now orthanc >/dev/null 2>&1; true; } || \
	    echo "note: orthanc could not be installed; the DICOMweb tests will be skipped"; }

# Trains a DenseNet-BC on the digits, indexes digits and pydicom's samples through a server, prints precision@10
# and writes a lookup page for a CT slice (demo-data/). Starts its own server; DEMO_ARGS="--target HOST:PORT" to
# use a running one.
demo: $(STAMP)
	$(BIN)/python scripts/demo.py $(DEMO_ARGS)

lint-imports: $(STAMP)
	$(BIN)/lint-imports

proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

bench: $(STAMP)
	$(BIN)/python bench/search.py

clean:
	rm -rf $(VENV) simdex-data demo-data .pytest_cache
