#!/bin/sh
# Starts one cell member of the StatefulSet: `titan server` with the settings of titan.toml (TITAN_CONFIG) and the
# three that differ per member, which Titan takes only as flags or values it cannot derive itself:
#   --node-id  the pod's ordinal plus 1 (POD_NAME is <statefulset>-<ordinal>);
#   --listen   POD_IP:MEMBER_PORT, since a member serves and is known by one address, an IP:PORT;
#   --peers    every member's ID=IP:PORT, this one's POD_IP and the others' resolved from their DNS names through the
#              headless Service (MEMBER_HOSTS, in member order), waiting up to MEMBER_RESOLVE_TIMEOUT seconds for
#              members that are not scheduled yet.
# Extra arguments are passed on to `titan server`.
set -eu

: "${POD_NAME:?POD_NAME is required (the downward API's metadata.name)}"
: "${POD_IP:?POD_IP is required (the downward API's status.podIP)}"
: "${MEMBER_HOSTS:?MEMBER_HOSTS is required (each member's DNS name, in member order)}"
: "${MEMBER_PORT:?MEMBER_PORT is required}"
timeout=${MEMBER_RESOLVE_TIMEOUT:-300}

ordinal=${POD_NAME##*-}
case $ordinal in
  '' | *[!0-9]*)
    echo "member.sh: cannot take a member id from the pod name $POD_NAME (want <name>-<ordinal>)" >&2
    exit 1
    ;;
esac
node_id=$((ordinal + 1))

# An IPv6 address goes in brackets before its port.
with_port() {
  case $1 in
    *:*) printf '[%s]:%s' "$1" "$MEMBER_PORT" ;;
    *) printf '%s:%s' "$1" "$MEMBER_PORT" ;;
  esac
}

# Peers are reached in this member's own address family (a dual-stack cluster resolves names to both).
case $POD_IP in
  *:*) family=ahostsv6 ;;
  *) family=ahostsv4 ;;
esac

# The first address a name resolves to, waiting for it until the deadline.
resolve() {
  waited=0
  while :; do
    ip=$(getent "$family" "$1" | awk 'NR == 1 { print $1 }') || ip=""
    if [ -n "$ip" ]; then
      printf '%s' "$ip"
      return 0
    fi
    if [ "$waited" -ge "$timeout" ]; then
      echo "member.sh: $1 did not resolve within ${timeout}s" >&2
      return 1
    fi
    sleep 2
    waited=$((waited + 2))
  done
}

listen=$(with_port "$POD_IP")
peers=""
id=0
for host in $MEMBER_HOSTS; do
  id=$((id + 1))
  if [ "$id" -eq "$node_id" ]; then
    addr=$listen
  else
    ip=$(resolve "$host") || exit 1
    addr=$(with_port "$ip")
  fi
  peers="$peers${peers:+,}$id=$addr"
done
if [ "$node_id" -gt "$id" ]; then
  echo "member.sh: member $node_id is beyond the cell's $id members (MEMBER_HOSTS)" >&2
  exit 1
fi

echo "member.sh: member $node_id listening on $listen, peers $peers" >&2
exec titan server --node-id "$node_id" --listen "$listen" --peers "$peers" "$@"
