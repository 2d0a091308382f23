# Two commands from a fresh clone (Python >= 3.11 and pip only): `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The shared test data beside the checkout, else beside the repository it was cloned from (a
# clone made elsewhere, e.g. in `mktemp -d`); BODYCAM_TESTDATA overrides both.
export BODYCAM_TESTDATA ?= $(or $(wildcard $(abspath ../shared/testdata)),$(wildcard $(abspath \
	$(shell git config --get remote.origin.url 2>/dev/null)/../shared/testdata)),$(abspath \
	../shared/testdata))
# The demo and tests use the offline embedder by name: FaceNet weights cannot be downloaded
# here, and Bodycam never switches models silently.
export BODYCAM_PIPELINE__EMBEDDER ?= dlib-resnet

.PHONY: install browser netns demo test lint bench bench-e2e eval eval-harsh bench-redact bench-gpu-prepare bench-gpu hostile \
	faults hosts clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[faces,embedded,dev]'
	# The clip generator and tools expect `ffmpeg` on PATH: use the imageio-ffmpeg binary.
	ln -sf "$$($(BIN)/python -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())')" $(BIN)/ffmpeg
	touch $@

demo: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m bodycam demo --testdata "$(BODYCAM_TESTDATA)"

lint: install
	$(BIN)/ruff check bodycam workers tests
	$(BIN)/mypy

# The web-app tests drive Debian's chromium with Playwright (its own browser download cannot
# work offline); installed here when missing (CI runs as root).
browser:
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

# The several-hosts test (tests/test_hosts.py) builds network namespaces with iproute2's `ip`;
# installed here when missing (CI runs as root; without root the test is skipped).
netns:
	command -v ip >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null)

# A private basetemp: the stacks' data live there (about 0.5 GB), and pytest prunes old shared
# ones. Removed after a green run, kept after a red one for its logs.
test: lint browser netns
	@base="$$(mktemp -d /tmp/bodycam-tests.XXXXXX)" && \
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -ra --basetemp="$$base" && \
	rm -rf "$$base"

bench: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m bodycam bench --testdata "$(BODYCAM_TESTDATA)"

# End to end on unseen clips (issue 14, part 1): speed seeds (9000-9999), a 720p30 and a harsh
# 1080p30 clip each, every clip ingested alone into a temporary stack and timed to `done`, the
# plain reference timed on the same clip; writes e2e-bench.json and its BENCHMARKS.md section.
E2E_SEEDS ?= 9000-9001
E2E_CLIP_S ?= 45
bench-e2e: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m bodycam.bench_e2e $(E2E_SEEDS) \
		--clip-s $(E2E_CLIP_S) --out e2e-bench.json --benchmarks BENCHMARKS.md

# Recognition on unseen footage (issue 12): generated clips of the TEST split (seeds 7000-7999;
# tuning seeds are 5000-5999), on a temporary stack, with the plain reference measured beside;
# writes eval-report.json and the recognition section of BENCHMARKS.md.
EVAL_SEEDS ?= 7000-7029
EVAL_CLIP_S ?= 20
eval: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m bodycam.evaluate $(EVAL_SEEDS) --split test \
		--clip-s $(EVAL_CLIP_S) --out eval-report.json --benchmarks BENCHMARKS.md \
		--thresholds docs/thresholds.md

# The same harness on harsher conditions than its own draws (3-6 people, tilt up to 40 degrees,
# fisheye 0.5, crf 32, 25 to 60 fps): how far the pipeline and the reference fall. Writes
# eval-harsh.json only; the figures go into BENCHMARKS.md by hand, never the calibration.
eval-harsh: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m bodycam.evaluate $(EVAL_SEEDS) --split test \
		--conditions harsh --clip-s $(EVAL_CLIP_S) --out eval-harsh.json

# The redaction benchmark (issue 13): `bodycam redact` (through a temporary stack), `deface` and
# a naive per-frame MTCNN blur on the same clips in one run (generated 720p30 and 1080p30 clips
# with known boxes, plus the shared real clips); leakage by independent detectors scanning every
# frame, and x real time. Writes redact-bench.json and the redact-bench section of BENCHMARKS.md.
# Arguments: REDACT_BENCH_ARGS (see `python -m bodycam.bench_redact --help`).
REDACT_BENCH_ARGS ?=
$(VENV)/.bench-installed: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[faces,embedded,dev,bench]'
	touch $@

bench-redact: install $(VENV)/.bench-installed
	PATH="$(abspath $(BIN)):$$PATH" TF_CPP_MIN_LOG_LEVEL=3 $(BIN)/python -m bodycam.bench_redact \
		--testdata "$(BODYCAM_TESTDATA)" --out redact-bench.json --benchmarks $(REDACT_BENCH_ARGS)

# The GPU worker benchmark (issue 14), prepared here and run in one go on a GPU machine that can
# download nothing. `make bench-gpu-prepare` (here, with PyPI): the cp312 x86-64 wheels that
# machine's Python lacks (at the versions installed here) into .gpubench/wheels/, and a 10 s
# 1080p30 clip into .gpubench/ (about 40 MB, ignored by git; its own folder, so no other
# task's wheels mix in). There, from the repository root with .gpubench/ carried along, one
# line: `sh infra/bench-gpu.sh` (installs the wheels into
# /tmp/bodycam-site, runs `python -m bodycam.bench_gpu --device cuda`, writes gpu-bench.json,
# gpu-bench.log and BENCHMARKS.md into $$OUT; stops itself inside 8 minutes). Bring
# gpu-bench.json back and `python -m bodycam.bench_gpu --from-report gpu-bench.json --benchmarks`.
# `make bench-gpu` runs the same script here, on the GPU if torch sees one, else on the CPU.
GPU_WHEELS := av pydantic pydantic-core pydantic-settings python-dotenv annotated-types \
	typing-inspection typing-extensions scenedetect-headless platformdirs facenet-pytorch
GPU_CLIP := .gpubench/bodycam-1080p30-10s.mp4
bench-gpu-prepare: install
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .gpubench/wheels $$($(BIN)/python -c 'import sys; \
		from importlib.metadata import version; print(" ".join(f"{n}=={version(n)}" \
		for n in sys.argv[1:]))' $(GPU_WHEELS))
	mkdir -p .gpubench
	test -f $(GPU_CLIP) || PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python \
		"$(BODYCAM_TESTDATA)/../tools/make_bodycam_clip.py" --out $(GPU_CLIP) --seed 3 \
		--duration 10 --size 1920x1080 --fps 30 --crf 28
	du -sh .gpubench

bench-gpu: install
	test -f $(GPU_CLIP) || $(MAKE) bench-gpu-prepare
	PYTHON=$(BIN)/python BENCH_GPU_WHEELS=0 BENCH_GPU_DEVICE=auto sh infra/bench-gpu.sh

# Several hosts alone (about 90-130 s; also part of `make test`): services in one network
# namespace, two worker hosts in others over veth links, one host cut off and killed mid-run;
# then a database client cut off while Postgres answers it must lose its locks within a minute.
hosts: install netns
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -s -ra -m hosts tests/test_hosts.py \
		--basetemp="$$(mktemp -d /tmp/bodycam-hosts.XXXXXX)"

# The long fault-injection run (RELIABILITY.md): 40 faults, four of each kind, about 30 min.
faults: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m bodycam.faults --faults 40 --clips 3 \
		--clip-s 40 --seed 11 --out faults-report.json

# The whole hostile-media corpus (seeded, ~400 files) through `bodycam ingest` against a fresh
# stack in a temporary home; the summary (counts by category, max time and RSS, reasons) is
# written to hostile-summary.json. Exits non-zero when any file breaks the contract.
HOSTILE_SEED ?= 1
hostile: install
	@home="$$(mktemp -d /tmp/bodycam-hostile.XXXXXX)"; \
	export BODYCAM_HOME="$$home" PATH="$(abspath $(BIN)):$$PATH"; \
	$(BIN)/python -m bodycam up || exit 1; \
	$(BIN)/python -m bodycam.hostile generate --seed $(HOSTILE_SEED) --out "$$home/corpus" && \
	$(BIN)/python -m bodycam.hostile run --corpus "$$home/corpus" --summary hostile-summary.json; \
	rc=$$?; $(BIN)/python -m bodycam down; rm -rf "$$home"; exit $$rc

clean:
	-$(BIN)/bodycam down
	rm -rf .bodycam
