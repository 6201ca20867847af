#!/bin/sh
# Starts one cell member of the StatefulSet: `titan server` with the settings of titan.toml (TITAN_CONFIG) and the
# four that differ per member, which Titan takes only as flags or values it cannot derive itself:
#   --node-id    the pod's ordinal plus 1 (POD_NAME is <statefulset>-<ordinal>);
#   --listen     every address of the pod at MEMBER_PORT: 0.0.0.0, or [::] when the pod's IP (POD_IP) is IPv6;
#   --advertise  this member's stable DNS name through the headless Service, HOST:MEMBER_PORT, by which the others
#                know it whatever its pod IP;
#   --peers      every member's ID=HOST:MEMBER_PORT, from their DNS names (MEMBER_HOSTS, in member order).
# Titan resolves the names each time it connects, so a member restarted with a new pod IP is found again, and a
# member whose peers are not scheduled yet simply retries them.
# Extra arguments are passed on to `titan server`.
set -eu

: "${POD_NAME:?POD_NAME is required (the downward API's metadata.name)}"
: "${POD_IP:?POD_IP is required (the downward API's status.podIP)}"
: "${MEMBER_HOSTS:?MEMBER_HOSTS is required (each member's DNS name, in member order)}"
: "${MEMBER_PORT:?MEMBER_PORT is required}"

ordinal=${POD_NAME##*-}
case $ordinal in
  '' | *[!0-9]*)
    echo "member.sh: cannot take a member id from the pod name $POD_NAME (want <name>-<ordinal>)" >&2
    exit 1
    ;;
esac
node_id=$((ordinal + 1))

# Listen in the pod's own address family (an IPv6 wildcard goes in brackets before its port).
case $POD_IP in
  *:*) listen="[::]:$MEMBER_PORT" ;;
  *) listen="0.0.0.0:$MEMBER_PORT" ;;
esac

advertise=""
peers=""
id=0
for host in $MEMBER_HOSTS; do
  id=$((id + 1))
  if [ "$id" -eq "$node_id" ]; then
    advertise="$host:$MEMBER_PORT"
  fi
  peers="$peers${peers:+,}$id=$host:$MEMBER_PORT"
done
if [ -z "$advertise" ]; then
  echo "member.sh: member $node_id is beyond the cell's $id members (MEMBER_HOSTS)" >&2
  exit 1
fi

echo "member.sh: member $node_id listening on $listen as $advertise, peers $peers" >&2
exec titan server --node-id "$node_id" --listen "$listen" --advertise "$advertise" --peers "$peers" "$@"
