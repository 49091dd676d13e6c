"""The Grafana dashboard and the Prometheus alert rules of egt runs, built in code.

`egt.dashboards.build` holds both; ``python -m egt.dashboards.build`` writes them to
``charts/egt/files/`` where the Helm chart picks them up. Their PromQL uses only the metric names the
stages push (``egt/metrics``), the Pushgateway's own ``push_time_seconds`` and the operator's
``egt_operator_*`` (docs/dashboards.md).
"""
