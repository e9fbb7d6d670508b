"""FHIR messaging between organisations, routed by consent, with nothing lost.

=====================  ====================================================================
module                 concern
=====================  ====================================================================
``vocabulary``         the sip-event CodeSystem and the MessageDefinitions (data, in
                       ``fhir/definitions/``)
``builder``            message and response Bundles the hub sends
``parser``             incoming message Bundles, checked with precise errors
``events``             what a write means (``classify``) and the hook that writes its
                       notification to the outbox (``Emitter``)
``outbox``             who receives a message (``destinations_for``: consent), enqueue,
                       withdrawal when consent changes
``process_message``    ``$process-message``: reliable messaging, atomic apply, routing
``relay``              outbox -> bus (publisher confirms, ``SKIP LOCKED``)
``delivery``           bus -> the organisation's endpoint; retry with backoff, dead letters
``replay``             dead deliveries sent again
``worker``             the loop running the above (``sip-hub worker``, or in-process)
``endpoints``          where organisations receive (``mappings/endpoints.json``)
``config``             ``SIP_HUB_MESSAGE_*`` settings; ``runtime``: what a process shares
=====================  ====================================================================

The bus itself is ``sip_hub.bus`` (the only kombu import); SQL is in ``sip_hub.store.outbox``
and ``sip_hub.store.inbox``.
"""
