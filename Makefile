# The commands the training guide's users type, each one line over our CLI. The README's set-up commands stay
# the canonical ones; `make test` runs the README's test command itself (through .ci/run, which reads it).
DATA ?= data/sample
OUT ?= runs/model
CONFIG ?= sample

.PHONY: dev data train test lint format

dev:     ## install torch and the package with every extra, editable
	pip install torch==2.14.1 torchvision==0.29.1 && pip install -e '.[dev]'

data:    ## the offline, deterministic sample dataset in $(DATA) (replaced if there)
	photo-detector data sample $(DATA) --force

train:   ## train on $(DATA) into $(OUT) with the $(CONFIG) profile
	photo-detector train --config $(CONFIG) --data $(DATA) --out $(OUT)

test:    ## exactly what CI runs: the README's test command
	bash .ci/run

lint:    ## ruff and the import-layer contracts
	ruff check . && lint-imports

format:  ## ruff's safe fixes (import order, modern syntax); the code is not reformatted wholesale
	ruff check --fix .
