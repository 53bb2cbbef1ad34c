"""What operators and other systems see of the gateway.

HTTP (health, readiness, metrics), Prometheus metrics, systemd's notify
protocol and Home Assistant discovery.

A surface follows the core (its state, its event stream) and may read the broker
session; nothing below imports a surface.
"""
