#!/usr/bin/env bash
# Size of a built image, by layer, and the largest packages of its /opt/venv, as Markdown.
# Usage: bench/image_size.sh [IMAGE]      (default localhost/histoedge-serve:test; needs buildah
#        and podman, as root to mount the image; build it with tests/container/run_container_test.sh)
set -euo pipefail
image=${1:-localhost/histoedge-serve:test}
echo "Image \`$image\`: $(buildah images --format '{{.Size}}' "$image" | head -1)"
echo
echo "| layer (oldest first) | size |"
echo "|---|---|"
podman history --no-trunc --format '{{.Size}}\t{{.CreatedBy}}' "$image" | tac | while IFS=$'\t' read -r size created; do
    [[ $size == "0 B" || $size == "0B" ]] && continue
    created=${created#/bin/sh -c }
    created=${created#\#(nop) }
    printf '| `%s` | %s |\n' "$(cut -c1-70 <<<"$created" | tr '|' '/')" "$size"
done
container=$(buildah from --quiet "$image")
trap 'buildah umount "$container" >/dev/null 2>&1 || true; buildah rm "$container" >/dev/null 2>&1 || true' EXIT
root=$(buildah mount "$container")
site=$(echo "$root"/opt/venv/lib/python3*/site-packages)
echo
echo "Largest entries of /opt/venv site-packages (MB):"
echo
echo "| package | MB |"
echo "|---|---|"
du -sm "$site"/* | sort -rn | head -12 | while read -r mb path; do
    printf '| %s | %s |\n' "${path##*/}" "$mb"
done
