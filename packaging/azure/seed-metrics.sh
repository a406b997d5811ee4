#!/bin/bash
# Runs once, in the deployment script pool.json declares, before the autoscale
# setting: autoscale refuses a rule on a custom metric that has never been
# posted (UnsupportedMetric; "The MetricTriggerMetricName must exist for the
# specified MetricTriggerMetricResourceUri",
# https://learn.microsoft.com/en-us/azure/virtual-machine-scale-sets/tutorial-autoscale-powershell).
# So it posts one point (value 0: no VM is spare or removable yet) of each
# metric the rules name, then waits until the scale set's metric definitions
# list them. Custom metrics REST API and its body:
# https://learn.microsoft.com/en-us/azure/azure-monitor/essentials/metrics-store-custom-rest-api
# Environment (set by the template): RESOURCE_ID (the scale set), REGION,
# NAMESPACE, METRICS (space separated).
set -eu
endpoint="https://${REGION}.monitoring.azure.com${RESOURCE_ID}/metrics"
deadline=$(( $(date +%s) + 1500 ))
wait_or_fail() {
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "gave up: $1" >&2
    exit 1
  fi
  # Role assignments take minutes to reach the endpoints; definitions appear
  # a few minutes after the first point.
  sleep 20
}
for metric in $METRICS; do
  until
    now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    body=$(printf '{"time":"%s","data":{"baseData":{"metric":"%s","namespace":"%s","dimNames":[],"series":[{"dimValues":[],"min":0,"max":0,"sum":0,"count":1}]}}}' \
      "$now" "$metric" "$NAMESPACE")
    az rest --method post --url "$endpoint" --resource "https://monitoring.azure.com/" \
      --headers "Content-Type=application/json" --body "$body" --output none
  do
    wait_or_fail "posting $metric"
  done
  echo "posted $metric"
done
for metric in $METRICS; do
  until az monitor metrics list-definitions --resource "$RESOURCE_ID" --namespace "$NAMESPACE" \
      --query "[].name.value" --output tsv 2>/dev/null | grep -qx "$metric"; do
    wait_or_fail "the definition of $metric"
  done
  echo "defined $metric"
done
printf '{"metrics":"%s"}' "$METRICS" > "${AZ_SCRIPTS_OUTPUT_PATH:-/dev/null}"
