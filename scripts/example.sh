#!/usr/bin/env bash
# Set up this machine and run ocibuild's main job on the bundled example, end to end:
#   install the tools and ocibuild, build the Debian Python base image (cached), train the example model,
#   package it into an image tarball, and print how to load and run it, then the image digest.
#
#   bash scripts/example.sh [OUT_DIR]     (default: ./example-out)
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-example-out}
mkdir -p "$out"

bash scripts/install-deps.sh
base=$(bash scripts/make-base-image.sh)
echo "example: training the example model into $out/model.pkl" >&2
python3 fixtures/example/train.py "$out"

python3 -m ocibuild package "$out/model.pkl" \
    --entry-script fixtures/example/score.py \
    --requirements fixtures/example/requirements.txt \
    --base "oci:$base/oci:py311" \
    --name diabetes-ridge --model-version 1 --tag diabetes-ridge:1 \
    --output "$out/image.tar" >"$out/digest.txt"

cat <<TXT

Built $out/image.tar. To run it:
  docker load -i $out/image.tar           # or: podman load -i $out/image.tar
  docker run --rm -p 6789:5001 diabetes-ridge:1
  curl -s -X POST localhost:6789/score -H 'Content-Type: application/json' \\
       -d '{"data": [[1,2,3,4,5,6,7,8,9,10],[10,9,8,7,6,5,4,3,2,1]]}'
(Where the engine runs without a bridge network: docker run --rm --network host diabetes-ridge:1, then port 5001.)

Image digest:
TXT
cat "$out/digest.txt"
