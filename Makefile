.PHONY: run test bench venv check-config clean-venv

# Everything runs from the project's own virtual environment, created on first use
# (Debian's /usr/bin/python3 refuses `pip install`: PEP 668). PYTHON picks the
# interpreter that creates it.
PYTHON ?= python3
VENV := .venv

venv:
	PYTHON=$(PYTHON) ./scripts/venv.sh

# Run the daemon on the embedded default (config.yaml: SQLite + the file provider).
run: venv
	$(VENV)/bin/mail2sms run --config config.yaml

check-config: venv
	$(VENV)/bin/mail2sms check-config --config config.yaml

# Install what the tests need (.venv with the test extras, dovecot-imapd when missing)
# and run them.
test:
	PYTHON=$(PYTHON) ./scripts/test.sh -q

bench: venv
	$(VENV)/bin/python bench/smtp_throughput.py

clean-venv:
	rm -rf $(VENV)
