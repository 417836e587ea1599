#!/usr/bin/env bash
# Create .venv-kserve for the KServe-native predictor: kserve (requirements-kserve.txt) layered over .venv.
#
#   bash kserve/setup_venv.sh && .venv-kserve/bin/python -m pytest -q tests/test_kserve_native.py
#
# .venv-kserve sees .venv's packages (torch, timm, pillow, ... : one 6 GB torch, not two) through a .pth file
# placed after its own site-packages, so whatever kserve needs in another version (psutil<6) is installed here
# and shadows .venv's copy only in this environment; .venv itself is never modified. A second run only
# reinstalls when requirements.txt or requirements-kserve.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
MAIN_SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
stamp=.venv-kserve/.requirements.sha256
want=$(cat requirements.txt requirements-kserve.txt | sha256sum | cut -d' ' -f1)
if [ -x .venv-kserve/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
"$(readlink -f .venv/bin/python)" -m venv .venv-kserve
SITE=$(.venv-kserve/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# addsitedir (not a bare path) so that .venv's own .pth files are processed too.
echo "import site; site.addsitedir('$MAIN_SITE')" > "$SITE/zz_pigment_main_venv.pth"
.venv-kserve/bin/python -m pip install -q -r requirements-kserve.txt
.venv-kserve/bin/python -m pip check
echo "$want" > "$stamp"
