#!/usr/bin/env bash
# One command for a fresh Debian/Ubuntu machine: Fashion-MNIST (apt) + the Python environment.
#   bash workflow/scripts/install.sh           # to run the pipeline
#   bash workflow/scripts/install.sh --tests   # also what only the tests need: Chromium (the
#                                              # report's browser test), PostgreSQL (the team
#                                              # MLflow server test), SLURM + munge and the
#                                              # Snakemake SLURM executor (the cluster test)
set -euo pipefail
cd "$(dirname "$0")/../.."
TESTS=0
for arg in "$@"; do
  case "$arg" in
    --tests) TESTS=1 ;;
    *) echo "usage: $0 [--tests]" >&2; exit 2 ;;
  esac
done
SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
APT=()
EXTRAS=dev
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || APT+=(dataset-fashion-mnist)
if [ "$TESTS" = 1 ]; then
  command -v chromium >/dev/null || APT+=(chromium)
  command -v slurmctld >/dev/null || APT+=(slurm-wlm munge)
  # Debian puts initdb and pg_ctl in /usr/lib/postgresql/<version>/bin
  command -v initdb >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null \
    || APT+=(postgresql)
  EXTRAS=dev,slurm
fi
if [ ${#APT[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${APT[@]}"
fi
python3 -m pip install -q torch==2.13.0   # CPU build; on a GPU machine install your CUDA torch first
python3 -m pip install -q -e ".[$EXTRAS]"
