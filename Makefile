.PHONY: run test bench install

PYTHON ?= python3

install:
	$(PYTHON) -m pip install --quiet -e .

# Run the daemon on the embedded default (config.yaml: SQLite + the file provider).
run: install
	$(PYTHON) -m bridge run --config config.yaml

# Install what the tests need (Python extras, dovecot-imapd when missing) and run them.
test:
	./scripts/test.sh -q

bench: install
	$(PYTHON) bench/smtp_throughput.py
