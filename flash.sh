#!/usr/bin/env bash
# flash.sh: put a model image onto a box.
#
#   ./flash.sh IMAGE.bsimg --target DIR      a box's state folder on this machine (or mounted)
#
# Steps, each printed as it runs: verify the image here (every file's sha256 and every graph
# against the manifest), copy it next to the box's models under a temporary name, verify the
# copy there, then rename it into place (atomic on one file system). The old image stays as
# models/previous.bsimg. Exit status: 0 done, 2 usage, 3 verify failed, 4 copy failed,
# 5 the copy did not verify, 6 activation failed.
# A/B slots with self-test, health check and rollback, and --host over ssh, come with the
# signed-image work (issue 5); until then this is the whole install.
set -uo pipefail

usage() { echo "usage: $0 IMAGE.bsimg --target DIR" >&2; exit 2; }
[ $# -eq 3 ] && [ "$2" = "--target" ] || usage
image="$1"; target="$3"
bedsight="${BEDSIGHT_BIN:-$(command -v bedsight || echo "$(dirname "$0")/target/release/bedsight")}"
[ -x "$bedsight" ] || { echo "flash: no bedsight binary (set BEDSIGHT_BIN or build it: cargo build --release)" >&2; exit 2; }

step() { echo "flash: $*"; }
step "1/4 verifying $image"
"$bedsight" image verify "$image" || { echo "flash: $image did not verify; nothing was changed on the box" >&2; exit 3; }

models="$target/models"
staged="$models/.incoming.bsimg"
step "2/4 copying to $staged"
mkdir -p "$models" && cp "$image" "$staged" && sync "$staged" || { rm -f "$staged"; echo "flash: copy to $models failed; nothing was changed" >&2; exit 4; }

step "3/4 verifying the copy on the box"
"$bedsight" image verify "$staged" >/dev/null || { rm -f "$staged"; echo "flash: the copy in $models did not verify (disk full? bad medium?); nothing was changed" >&2; exit 5; }

step "4/4 activating"
if [ -f "$models/active.bsimg" ]; then cp -p "$models/active.bsimg" "$models/previous.bsimg" || exit 6; fi
mv -f "$staged" "$models/active.bsimg" || { echo "flash: could not move the image into place" >&2; exit 6; }
sync "$models"
step "done: $models/active.bsimg ($("$bedsight" image info "$models/active.bsimg" | sed -n 's/^name *//p'))"
