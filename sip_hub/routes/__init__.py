"""HTTP routes, one router per concern, included explicitly by ``sip_hub.app``."""

from . import auth, fhir_rest, health

ROUTERS = (health.router, auth.router, fhir_rest.router)
