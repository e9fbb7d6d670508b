"""FHIR R4 for sip_hub: models, validation, profiles, search parameters, capability."""
