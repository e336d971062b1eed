#!/usr/bin/env python3
"""Parses ledge's /metrics with the reference OpenMetrics parser (prometheus_client) and
prints every sample as `name{label="value",...} value`, labels sorted, one per line.
Fails (non-zero exit) if the text does not parse."""
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families

text = urllib.request.urlopen(sys.argv[1]).read().decode()
for family in text_string_to_metric_families(text):
    for sample in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
        print(f"{sample.name}{{{labels}}} {sample.value}")
