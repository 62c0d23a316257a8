#!/usr/bin/env bash
# The GPU check (benchmarks/gpu/check.py): GPU tests, a ~1B two-agent RL step in bf16-mixed and with a
# shared 4-bit base (peak memory against `python -m waltzlit plan`), the equal-work benchmark on CUDA.
#   bash benchmarks/gpu/check.sh [--dry-run] [--out FILE]      # JSON: $OUT/gpu_check.json or benchmarks/results/
set -euo pipefail
cd "$(dirname "$0")/../.."
exec "${PYTHON:-python}" benchmarks/gpu/check.py "$@"
