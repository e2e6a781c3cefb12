# inferd — the two commands of the README are `make run` and `make test`.
# Both run `make setup` first (idempotent; fast once done).

INFERD_CACHE ?= $(HOME)/.cache/inferd
export INFERD_CACHE
CARGO ?= cargo
MODEL ?= weights/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
PROMPT ?= What is the capital of France?

.PHONY: setup build run chat test bench fixtures clean-fixtures

setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --release --workspace

CONFIG ?= config/default.toml

# Serve the default config (SmolLM2 on CPU) on http://127.0.0.1:8080.
run: build
	./target/release/inferd serve --config $(CONFIG)

# One chat from the command line, no server.
chat: build
	./target/release/inferd generate --model $(MODEL) --chat "$(PROMPT)" --max-tokens 64

test: setup
	$(CARGO) test --release --workspace --no-fail-fast -- --nocapture --test-threads=1

# Speed, measured with the transformers baselines in the same run.
bench: setup
	$(CARGO) bench --bench decode
	$(INFERD_CACHE)/venv/bin/python benches/transformers_decode.py
	$(CARGO) bench --bench engine
	$(INFERD_CACHE)/venv/bin/python benches/transformers_engine.py

# inferd against llama-server, llama-cpp-python and transformers serve, by hand on a
# quiet machine (benches/compare/README.md). COMPARE_ARGS="--smoke" for a quick check.
.PHONY: compare
compare: setup
	bash benches/compare/run.sh $(COMPARE_ARGS)

fixtures:
	@$(INFERD_CACHE)/venv/bin/python weights/make_fixtures.py --out weights/fixtures

clean-fixtures:
	rm -rf weights/fixtures
