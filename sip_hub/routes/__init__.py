"""HTTP routes, one router per concern, included explicitly by ``sip_hub.app``."""

from ..metrics import metrics_router
from . import admin, auth, citizen, fhir_rest, health, messaging, process, rivta

# Operation routes come before fhir_rest, whose /fhir/{type}/{id} would otherwise take them.
ROUTERS = (health.router, metrics_router, auth.router, admin.router, citizen.router,
           process.router, messaging.router, rivta.router, fhir_rest.router)
