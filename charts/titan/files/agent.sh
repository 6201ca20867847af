#!/bin/sh
# Starts the node's agent: `titan agent` with the chart's flags (the arguments), serving on HOST_IP:AGENT_PORT (the
# node's address: the agent runs on the host network), and, when AGENT_EC2_INSTANCE_ID is true, with the instanceId
# attribute read from the EC2 instance metadata service (IMDSv2), by which the autoscaler's ec2 groups know their
# instances.
set -eu

: "${HOST_IP:?HOST_IP is required (the downward API's status.hostIP)}"
: "${AGENT_PORT:?AGENT_PORT is required}"

case $HOST_IP in
  *:*) addr="[$HOST_IP]:$AGENT_PORT" ;;
  *) addr="$HOST_IP:$AGENT_PORT" ;;
esac

if [ "${AGENT_EC2_INSTANCE_ID:-false}" = true ]; then
  imds=http://169.254.169.254/latest
  token=$(curl -fsS -m 5 -X PUT "$imds/api/token" -H 'X-aws-ec2-metadata-token-ttl-seconds: 60')
  instance=$(curl -fsS -m 5 -H "X-aws-ec2-metadata-token: $token" "$imds/meta-data/instance-id")
  set -- "$@" --attr "instanceId=$instance"
fi

# With tokens on: the agent is its node (id = the node's name) and presents that node's agent token, a key of the
# Secret mounted at AGENT_TOKEN_DIR (`titan acl token create --role agent --agent NODE` for each node).
if [ -n "${AGENT_TOKEN_DIR:-}" ]; then
  : "${NODE_NAME:?NODE_NAME is required with agent tokens (the downward API's spec.nodeName)}"
  [ -r "$AGENT_TOKEN_DIR/$NODE_NAME" ] || { echo "agent.sh: no token for node $NODE_NAME in $AGENT_TOKEN_DIR" >&2; exit 1; }
  set -- "$@" --id "$NODE_NAME" --token-file "$AGENT_TOKEN_DIR/$NODE_NAME"
fi

exec titan agent --addr "$addr" "$@"
