#!/usr/bin/env python3
"""Parses ledge's /metrics with the reference OpenMetrics parser (prometheus_client) and
prints every sample as `name{label="value",...} value`, labels sorted, one per line.
Fails (non-zero exit) if the text does not parse. Usage: parse_metrics.py URL TOKEN (metrics
need a manage token)."""
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families

request = urllib.request.Request(sys.argv[1], headers={"Authorization": f"Bearer {sys.argv[2]}"})
text = urllib.request.urlopen(request).read().decode()
for family in text_string_to_metric_families(text):
    for sample in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
        print(f"{sample.name}{{{labels}}} {sample.value}")
