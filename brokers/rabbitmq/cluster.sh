#!/bin/bash
# A 3-node RabbitMQ cluster on this machine, for tests/test_rabbitmq_cluster.py.
#   brokers/rabbitmq/cluster.sh up      # nodes gw1..gw3@localhost, MQTT on 1901..1903
#   brokers/rabbitmq/cluster.sh stop N  # stop node N (the test stops the one in use)
#   brokers/rabbitmq/cluster.sh down    # stop every node and remove their data
# Needs Debian's rabbitmq-server (run as root: the nodes run as user rabbitmq).
# MQTT session queues are quorum queues, replicated on the three nodes.
set -euo pipefail
base=${RABBITMQ_CLUSTER_DIR:-/tmp/iot-gateway-rabbitmq}
node() { echo "gw$1@localhost"; }

up() {
  for n in 1 2 3; do
    dir=$base/n$n
    mkdir -p "$dir"
    cat >"$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = $((5690 + n))
mqtt.listeners.tcp.default = $((1900 + n))
mqtt.allow_anonymous = true
mqtt.durable_queue_type = quorum
management.tcp.port = $((15690 + n))
loopback_users = none
CONF
    echo "[rabbitmq_mqtt]." >"$dir/enabled_plugins"
  done
  chown -R rabbitmq:rabbitmq "$base"
  for n in 1 2 3; do start "$n"; done
  for n in 2 3; do
    rabbitmqctl -q -n "$(node "$n")" stop_app
    rabbitmqctl -q -n "$(node "$n")" join_cluster "$(node 1)"
    rabbitmqctl -q -n "$(node "$n")" start_app
  done
}

start() {
  local dir=$base/n$1
  (RABBITMQ_NODENAME=$(node "$1") RABBITMQ_CONFIG_FILE=$dir/rabbitmq \
    RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins RABBITMQ_MNESIA_BASE=$dir/mnesia \
    RABBITMQ_LOG_BASE=$dir/log RABBITMQ_DIST_PORT=$((25690 + $1)) \
    setsid rabbitmq-server >"$dir/server.out" 2>&1 &)
  for _ in $(seq 90); do
    rabbitmqctl -q -n "$(node "$1")" await_startup >/dev/null 2>&1 && return 0
    sleep 1
  done
  echo "node $(node "$1") did not start; see $dir/server.out" >&2
  return 1
}

case ${1:-} in
  up) up ;;
  stop) rabbitmqctl -q -n "$(node "$2")" stop ;;
  down)
    for n in 1 2 3; do rabbitmqctl -q -n "$(node "$n")" stop >/dev/null 2>&1 || true; done
    rm -rf "$base"
    ;;
  *) echo "usage: $0 up | stop N | down" >&2; exit 2 ;;
esac
