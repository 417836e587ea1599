#!/bin/bash
# Entrypoint of the pigment TorchServe images (docker/Dockerfile.cpu, docker/Dockerfile.gpu).
#
#   serve [extra torchserve flags]   the default CMD: serve model-store/pigment.mar with the baked config
#   torchserve --start ...           a full torchserve command line (KServe's TorchServe runtime passes one)
#   anything else                    run as is (e.g. `bash`, `python -c ...`)
#
# Unlike the base image's dockerd-entrypoint.sh, this never adds --disable-token-auth. TorchServe runs in the
# foreground so the container lives as long as the server, and `docker stop` (SIGTERM) becomes `torchserve --stop`,
# which lets the frontend stop its workers before the container's grace period ends.
set -uo pipefail

PIGMENT_HOME=${PIGMENT_HOME:-/home/model-server}

run_torchserve() {
    local pid=""
    trap 'torchserve --stop; [[ -z $pid ]] || wait "$pid"' TERM INT
    "$@" &
    pid=$!
    wait "$pid"
}

case "${1:-serve}" in
    serve)
        shift $(($# > 0 ? 1 : 0))
        run_torchserve torchserve --start --foreground --ncs \
            --ts-config "$PIGMENT_HOME/config.properties" \
            --model-store "$PIGMENT_HOME/model-store" \
            --models pigment=pigment.mar "$@"
        ;;
    torchserve)
        [[ " $* " == *" --foreground "* ]] || set -- "$@" --foreground
        run_torchserve "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
