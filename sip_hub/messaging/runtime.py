"""What the messaging parts share in one process: settings, endpoints, the emitter, the bus."""

from __future__ import annotations

from dataclasses import dataclass

from ..bus import Bus, Topology
from ..settings import Settings
from .backlog import Backlog
from .config import MessagingSettings
from .endpoints import Endpoints
from .events import Emitter


@dataclass(frozen=True, slots=True)
class Messaging:
    config: MessagingSettings
    endpoints: Endpoints
    emitter: Emitter
    backlog: Backlog

    @classmethod
    def from_config(cls, config: MessagingSettings) -> "Messaging":
        endpoints = Endpoints.load(config.endpoints_file)
        if endpoints.queue_orgs and config.broker_url.startswith("memory://"):
            raise ValueError(
                f"{config.endpoints_file}: {', '.join(sorted(endpoints.queue_orgs))} would take "
                "its messages from its queue, which the in-process bus cannot offer: set "
                "SIP_HUB_BROKER_URL to RabbitMQ (amqp://...), or give it a url")
        return cls(config, endpoints,
                   Emitter(config.fhir_base, endpoints, config.hub_hsa_id or None),
                   Backlog(config.backlog_limit))

    @classmethod
    def for_hub(cls, settings: Settings, **overrides: object) -> "Messaging":
        """Read the ``SIP_HUB_MESSAGE_*`` settings (once) and the endpoints file."""
        return cls.from_config(MessagingSettings.for_hub(settings, **overrides))

    @property
    def topology(self) -> Topology:
        return Topology(self.config.exchange, self.config.queue_prefix)

    def bus(self) -> Bus:
        """A new connection to the broker (a Bus belongs to one thread)."""
        return Bus(self.config.broker_url, self.topology)
