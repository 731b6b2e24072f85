#!/usr/bin/env bash
#
# The whole system on one machine as it would run over several: three
# clustered nats-servers with every stream replicated three times, two APIs
# and three workers, PostgreSQL and Redis, all supervised; Ctrl-C stops it.
#
#   scripts/cluster.sh          the same as scripts/run.sh --cluster
#   scripts/cluster.sh --demo   then the flash-sale demo, buyers spread over
#                               both APIs
#
# Everything scripts/run.sh reads applies (CHECKLINE_HTTP_ADDR: the first
# API's address, the second one on the next port; CHECKLINE_WORKERS,
# CHECKLINE_APIS, ...), and the cluster's ports:
# CHECKLINE_CLUSTER_NATS_PORT (4261-4263), CHECKLINE_CLUSTER_NATS_MONITOR_PORT
# (8261-8263), CHECKLINE_CLUSTER_NATS_ROUTE_PORT (6261-6263).

exec "$(dirname "${BASH_SOURCE[0]}")/run.sh" --cluster "$@"
