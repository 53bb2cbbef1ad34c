"""The web dashboard on the HTTP port: a page, its JSON API and live updates (contract 13)."""

from gateway.surfaces.dashboard.api import Dashboard
from gateway.surfaces.dashboard.model import DashboardModel, GatewayFacts

__all__ = ["Dashboard", "DashboardModel", "GatewayFacts"]
