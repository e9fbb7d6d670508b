"""HTTP routes, one router per concern, included explicitly by ``sip_hub.app``."""

from . import auth, citizen, fhir_rest, health, process

# Operation routes come before fhir_rest, whose /fhir/{type}/{id} would otherwise take them.
ROUTERS = (health.router, auth.router, citizen.router, process.router,
           fhir_rest.router)
