# Generated docs: figures from bench/results, the flag reference from the parsers (tests/unit/test_docs_match_code.py checks both).
.PHONY: docs-figures docs-flags

docs-figures: install ## rewrite every generated figure block in README/docs from bench/results/<bench>-<cpu kind>.json
	$(PY) -m bench.render_docs

docs-flags: install ## rewrite the flag reference (docs/configuration.md) from the services' parsers
	$(PY) -m devtools.flagdoc --write
