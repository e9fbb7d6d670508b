"""Adapters between sip_hub and the organisations' own systems (FHIR-native and XML-based,
configured by declarative mappings in ``mappings/``).

None is implemented yet: that is the adapters issue. Until then, organisations that speak FHIR
receive their messages at their ``$process-message`` endpoint (``sip_hub.messaging.delivery``).
"""
