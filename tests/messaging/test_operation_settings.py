"""A process operation applied by message runs with the hub's settings, as over REST.

The setting checked is ``sip_inactive_days``: the deadline Tasks an operation reconciles
(``deadlines.reconcile``) depend on it. Every operation writes the SIP before it reconciles,
so the inactivity deadline is never due there and the setting has no effect a client could
see; the test reads it on the ``Operation`` that reaches the real ``reconcile``.
"""

from __future__ import annotations

import pytest

import sip_factory as f
from harness import SOC, Hub, broker, hub  # noqa: F401
from sip_hub import deadlines
from sip_hub.settings import Settings
from sip_process import approval, code, parameters
from harness import with_parameters
from test_operations_by_message import PLAN, VIA, _held, _step

INACTIVE_DAYS = 30  # not the default (90)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"sip_inactive_days": INACTIVE_DAYS})


@VIA
def test_an_operation_by_message_reconciles_with_the_configured_inactivity(
        hub: Hub, via: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _held(hub)
    seen: list[int] = []
    real = deadlines.reconcile

    def reconcile(op, plan):  # type: ignore[no-untyped-def]
        seen.append(op.inactive_days)
        return real(op, plan)

    monkeypatch.setattr(deadlines, "reconcile", reconcile)
    approved = approval("Patient/alva", f.MOTHER)
    _step(hub, via, SOC, with_parameters("plan-established", SOC, parameters(*approved),
                                          focus=[f"CarePlan/{PLAN}"]),
          f"CarePlan/{PLAN}/$transition", parameters(code("to", "upprattad"), *approved))
    assert seen and set(seen) == {INACTIVE_DAYS}
