"""Messaging settings: ``SIP_HUB_MESSAGE_*`` environment variables, typed, read once.

The broker URL, the public base URL and the mappings folder come from the hub's ``Settings``
(``SIP_HUB_BROKER_URL``, ``SIP_HUB_BASE_URL``, ``SIP_HUB_MAPPINGS_DIR``); ``for_hub`` joins them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..identifiers import InvalidIdentifier, normalise_hsa_id
from ..settings import Settings

# The longest HTTP timeout of a delivery (SIP_HUB_MESSAGE_TIMEOUT_SECONDS, an endpoint's
# timeoutSeconds): finite, and far below what libcurl takes (milliseconds in a C long).
MAX_TIMEOUT_SECONDS = 3600
# Bounds of the periods the hub turns into microseconds in a BIGINT (and compares instants
# with): far beyond any use, and an error at start instead of in every worker round. A
# retention meant as "for ever" (999999999 days) passed and then failed every upkeep.
MAX_RETENTION_DAYS = 36_500  # a hundred years
MAX_CACHE_MINUTES = 525_600  # a year (also keeps reliableCache an unsignedInt)
MAX_REPUBLISH_SECONDS = 30 * 86_400
MAX_RETRY_SECONDS = 86_400  # (finite: a delivery's next attempt is an instant)
MAX_POLL_SECONDS = 3_600  # (a wait longer than the platform's time_t failed every round)
MAX_INACTIVE_DAYS = 36_500


class MessagingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIP_HUB_MESSAGE_", extra="ignore")

    # Reliable messaging: how long $process-message remembers Bundle.id and MessageHeader.id
    # with the response it gave. The spec asks for at least the senders' timeout plus a
    # minute; a day also covers a sender that retries after a night's outage.
    cache_minutes: int = Field(default=24 * 60, ge=16, le=MAX_CACHE_MINUTES)
    # Delivery to an organisation: attempts before the dead-letter queue, exponential backoff
    # between them (base * 2^(attempt-1), at most retry_max_seconds), HTTP timeout.
    max_attempts: int = Field(default=8, ge=1)
    retry_base_seconds: float = Field(default=10.0, gt=0, le=MAX_RETRY_SECONDS)
    retry_max_seconds: float = Field(default=3600.0, gt=0, le=MAX_RETRY_SECONDS)
    # (finite and at most an hour: an infinite or huge one passed every check and then
    # failed every POST, libcurl's timeout being a C long of milliseconds)
    timeout_seconds: float = Field(default=10.0, gt=0, le=MAX_TIMEOUT_SECONDS)
    # A delivery published this long ago and still not settled is published again (the
    # broker lost it); receivers drop the duplicate by MessageHeader.id.
    republish_after_seconds: int = Field(default=3600, ge=10, le=MAX_REPUBLISH_SECONDS)
    # Delivered and withdrawn deliveries are forgotten after this many days.
    retention_days: int = Field(default=30, ge=1, le=MAX_RETENTION_DAYS)
    # The organisations' $process-message endpoints (see sip_hub.messaging.endpoints);
    # empty: <mappings_dir>/endpoints.json.
    endpoints_file: Path | None = None
    # The hub's own HSA-id, the sender of its responses; empty: responses name no sender
    # (their source names the hub).
    hub_hsa_id: str = ""
    # Deliveries one relay round publishes, and one delivery batch takes (and prefetches).
    relay_batch: int = Field(default=100, ge=1, le=10_000)
    # Back-pressure: $process-message answers transient-error while this many deliveries or
    # more are due and undelivered (see sip_hub.messaging.backlog); 0: no bound.
    backlog_limit: int = Field(default=2_000, ge=0)
    poll_seconds: float = Field(default=1.0, gt=0, le=MAX_POLL_SECONDS)
    # `sip-hub worker` serves its metrics (/metrics) on this port of SIP_HUB_HOST; 0: not at
    # all. Deliveries and dead letters are counted in the worker, not in the API process.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # Names on the broker (tests give each run its own).
    exchange: str = "sip_hub"
    queue_prefix: str = "sip"
    # Filled from Settings by for_hub.
    broker_url: str = "memory://"
    base_url: str = ""
    # SIP_HUB_SIP_INACTIVE_DAYS: operations applied by message reconcile the deadline Tasks
    # with it, as the REST operations and the deadline scan do.
    sip_inactive_days: int = Field(default=90, ge=1, le=MAX_INACTIVE_DAYS)

    @field_validator("hub_hsa_id")
    @classmethod
    def _hub_hsa_id(cls, v: str) -> str:
        """Normalised as every HSA-id the hub compares it with (messages' destinations,
        senders): a lower-case one matched none of them."""
        if not v:
            return v
        try:
            return normalise_hsa_id(v)
        except InvalidIdentifier as exc:
            raise ValueError(f"not an HSA-id: {exc}") from None

    @classmethod
    def for_hub(cls, settings: Settings, **overrides: object) -> "MessagingSettings":
        values: dict[str, object] = {"broker_url": settings.broker_url,
                                     "base_url": settings.public_base,
                                     "sip_inactive_days": settings.sip_inactive_days}
        values.update(overrides)
        out = cls(**values)  # type: ignore[arg-type]
        if out.endpoints_file is None:
            out.endpoints_file = settings.mappings_dir / "endpoints.json"
        return out

    @property
    def fhir_base(self) -> str:
        return f"{self.base_url.rstrip('/')}/fhir"

    def retry_delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt."""
        try:
            delay = self.retry_base_seconds * 2.0 ** max(attempts - 1, 0)
        except OverflowError:  # (doubled past what a float holds: past the maximum anyway)
            return float(self.retry_max_seconds)
        return float(min(delay, self.retry_max_seconds))
