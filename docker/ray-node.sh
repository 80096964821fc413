#!/bin/sh
# This machine's Ray node, on fixed ports so that a firewall can let them through (docker/README.md, "Ports").
#   ray-node.sh head   [more `ray start` flags]   on the head machine (its trials' CPUs and GPUs: none)
#   ray-node.sh worker [more `ray start` flags]   on every GPU machine (all of its GPUs)
# Reads NODE_IP (this machine's address on the cluster's private network) and, on a worker, RAY_HEAD (the head
# machine's). Token authentication: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH, a file holding the cluster's
# token (node.env; never the token itself on a command line). The same command runs in the image (compose.yaml),
# on a bare machine and in the tests' separate hosts (tests/hosts.py).
set -eu
role=${1:?usage: ray-node.sh head|worker [ray start flags]}
shift
: "${NODE_IP:?set NODE_IP to this machine address on the cluster network}"
set -- --node-ip-address="$NODE_IP" --node-manager-port=6380 --object-manager-port=6381 \
  --runtime-env-agent-port=6382 --dashboard-agent-grpc-port=6383 --dashboard-agent-listen-port=6384 \
  --metrics-export-port=6385 --min-worker-port=10002 --max-worker-port=10999 --disable-usage-stats --block "$@"
case "$role" in
  head)
    # num-cpus 0, num-gpus 0: every trial runs on a GPU machine; the head runs the sweeps' drivers and the stores.
    exec ray start --head --port=6379 --dashboard-host=0.0.0.0 --dashboard-port=8265 \
      --ray-client-server-port=10001 --num-cpus=0 --num-gpus=0 "$@" ;;
  worker)
    : "${RAY_HEAD:?set RAY_HEAD to the head machine address}"
    gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l)
    exec ray start --address="$RAY_HEAD:6379" --num-gpus="$gpus" "$@" ;;
  *)
    echo "ray-node.sh: role $role is not head or worker" >&2
    exit 2 ;;
esac
