"""HTTP routes, one router per concern, included explicitly by ``sip_hub.app``."""

from . import fhir_rest, health

ROUTERS = (health.router, fhir_rest.router)
