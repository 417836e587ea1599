#!/usr/bin/env bash
# The main job (`make serve`): demo data -> demo model -> pigment.mar -> TorchServe -> a real answer.
# Every step is skipped when its output already exists, so a second run only (re)starts what is missing.
#   PIGMENT_DEMO_N       lesions to generate (default 600)
#   PIGMENT_DEMO_HELDOUT lesions of the held-out benchmark (another seed) the trained model is scored on (default 200)
#   PIGMENT_DEMO_CALIBRATION lesions of a third seed the interval and OOD thresholds are calibrated on (default 400)
#   PIGMENT_DEMO_CONFIG  training config (default training/configs/demo.yaml)
#   PIGMENT_PAGE_PORT    the review page's port on 127.0.0.1 (default 3000)
#   PIGMENT_DEMO_SET     space-separated config overrides for training, e.g. "training.epochs=1" (CI's smoke run)
#   --model-only         stop once the demo model is trained (make benchmark checks its accuracy)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
source "$ROOT/scripts/python.sh"
DATA=data/demo
HELDOUT=data/demo-heldout
CALIBRATION=data/demo-calibration
RUN=runs/demo
STORE=model_store
SERVER_DIR=logs
N=${PIGMENT_DEMO_N:-600}
N_HELDOUT=${PIGMENT_DEMO_HELDOUT:-200}
N_CALIBRATION=${PIGMENT_DEMO_CALIBRATION:-400}
CONFIG=${PIGMENT_DEMO_CONFIG:-training/configs/demo.yaml}
start=$SECONDS
step() { printf '\n==> [%4ds] %s\n' $((SECONDS - start)) "$*"; }

if [[ ! -f $DATA/labels.csv ]]; then
    step "generating the embedded benchmark: $N synthetic matched lesions in $DATA"
    rm -rf "$DATA"
    $PY -m training.synth --out "$DATA" --n "$N" --seed 1
else
    step "reusing $DATA ($(($(wc -l < "$DATA/labels.csv") - 1)) lesions)"
fi

if [[ ! -f $RUN/.complete ]]; then
    train_args=()
    [[ -f $RUN/last.pth ]] && train_args=(--resume)
    for override in ${PIGMENT_DEMO_SET:-}; do train_args+=(--set "$override"); done
    # --processes auto: data parallel over the cores, one thread each (the small demo model gains nothing from a
    # second thread, but a second process nearly halves the epoch: docs/training.md).
    step "training the demo model ($CONFIG) into $RUN ${train_args[*]}"
    $PY -m training.train --config "$CONFIG" --data "$DATA" --out "$RUN" --processes auto "${train_args[@]}"
    touch "$RUN/.complete"
else
    step "reusing the trained model $RUN/best_model.pth"
fi

# Training calibrates on its validation lesions, which also chose the checkpoint: such intervals under-cover
# (docs/trust.md). The demo recalibrates on lesions of another seed that neither trained nor selected it,
# keeping the training lesions' feature distributions that the out-of-distribution score measures against.
if [[ ! -f $RUN/.calibrated || $RUN/best_model.pth -nt $RUN/.calibrated ]]; then
    if [[ ! -f $CALIBRATION/labels.csv ]]; then
        step "generating $N_CALIBRATION calibration lesions (seed 6, never trained on) in $CALIBRATION"
        rm -rf "$CALIBRATION"
        $PY -m training.synth --out "$CALIBRATION" --n "$N_CALIBRATION" --seed 6
    fi
    step "calibrating the interval and out-of-distribution thresholds on $CALIBRATION"
    $PY -m training.calibrate --checkpoint "$RUN/best_model.pth" --data "$CALIBRATION" --out "$RUN/best_model.pth"
    touch "$RUN/.calibrated"
fi

if [[ ! -f $RUN/heldout/summary.json || $RUN/best_model.pth -nt $RUN/heldout/summary.json ]]; then
    if [[ ! -f $HELDOUT/labels.csv ]]; then
        step "generating $N_HELDOUT held-out lesions (seed 2, never trained on) in $HELDOUT"
        rm -rf "$HELDOUT"
        $PY -m training.synth --out "$HELDOUT" --n "$N_HELDOUT" --seed 2
    fi
    step "scoring the demo model on $HELDOUT"
    $PY -m training.evaluate --checkpoint "$RUN/best_model.pth" --data "$HELDOUT" --out "$RUN/heldout" > "$RUN/heldout.log"
fi
$PY - "$RUN/heldout/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
fused = s["subsets"]["all"]  # lesions with dermoscopy (and a real or simulated multispectral view), every view
print(f"held-out ({s['n_lesions']} lesions of another seed): MAE {s['overall']['mae']:.4f} = "
      f"{s['mae_ratio_to_baseline']:.2f}x the mean predictor's {s['baseline_mean']['mae']:.4f}; "
      f"on the {fused['n']} with dermoscopy, every view gives {fused['mae'] / fused['clinical_only_mae']:.2f}x "
      f"the clinical photo's MAE")
trust = s.get("trust")
if trust:
    o = trust["overall"]
    print(f"its {trust['coverage_target']:.0%} intervals held the true score for {o['coverage']:.1%} of them "
          f"(mean width {o['mean_width']:.3f}); {o['ood_flagged']:.1%} were flagged out of distribution")
PY
[[ ${1:-} == --model-only ]] && exit 0

rebuilt=0
if [[ ! -f $STORE/pigment.mar || $RUN/best_model.pth -nt $STORE/pigment.mar ]]; then
    step "building $STORE/pigment.mar"
    bash scripts/build_mar.sh "$RUN/best_model.pth" "$STORE"
    rebuilt=1
fi

if $PY scripts/local_torchserve.py status --run-dir "$SERVER_DIR" >/dev/null 2>&1; then
    if [[ $rebuilt == 1 ]]; then
        step "restarting TorchServe with the new archive"
        $PY scripts/local_torchserve.py stop --run-dir "$SERVER_DIR"
        $PY scripts/local_torchserve.py start --model-store "$STORE" --run-dir "$SERVER_DIR"
    else
        step "TorchServe is already serving pigment"
    fi
else
    step "starting TorchServe (loopback, token auth on)"
    $PY scripts/local_torchserve.py start --model-store "$STORE" --run-dir "$SERVER_DIR"
fi

lesion=$(sed -n 2p "$DATA/labels.csv" | cut -d, -f1)
clinical=$(ls "$DATA"/clinical/images/"$lesion".*)
dermoscopy=$(ls "$DATA"/dermoscopy/images/"$lesion".* 2>/dev/null || true)
args=(--clinical "$clinical")
[[ -n $dermoscopy ]] && args+=(--dermoscopy "$dermoscopy")
step "asking the served model about lesion $lesion"
$PY scripts/client.py --run-dir "$SERVER_DIR" "${args[@]}"

port=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["ports"]["inference"])' "$SERVER_DIR/server.json")
step "serving the review page (web/) on 127.0.0.1:${PIGMENT_PAGE_PORT:-3000}"
page="the review page did not start (see the error above); the API works without it"
if $PY -m web.server start --api "http://127.0.0.1:$port" --checkpoint "$RUN/best_model.pth" \
        --port "${PIGMENT_PAGE_PORT:-3000}" --run-dir "$SERVER_DIR/web"; then
    page=$($PY -m web.server url --run-dir "$SERVER_DIR/web" --torchserve-run-dir "$SERVER_DIR")
fi
cat <<MSG

pigment is being served on http://127.0.0.1:$port (ready in $((SECONDS - start)) s).

Open the review page (the key travels in the address's #fragment, which the browser never sends anywhere):

  $page

Or try:

  KEY=\$($PY -c 'import json; print(json.load(open("$SERVER_DIR/key_file.json"))["inference"]["key"])')
  curl -s -X POST http://127.0.0.1:$port/predictions/pigment -H "Authorization: Bearer \$KEY" \\
       -F "clinical_image=@$clinical"${dermoscopy:+ -F "dermoscopy_image=@$dermoscopy"}

  $PY scripts/client.py ${args[*]}

Logs: $SERVER_DIR/logs/   Keys: $SERVER_DIR/key_file.json   Stop: make stop
MSG
