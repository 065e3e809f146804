#!/usr/bin/env bash
# The demo: a local fleet receiving a signed update. Not yet: the operator and agent are being built.
echo "pollen demo: not yet available — the operator and node agent are still being built."
echo "Run the test suite instead: make test"
exit 0
