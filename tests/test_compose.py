"""docker-compose.yml, "the production shape" (README, Operations): no secret baked in, and
nothing but the API published to the network."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _text() -> str:
    return (ROOT / "docker-compose.yml").read_text()


def test_the_compose_file_bakes_in_no_default_password() -> None:
    """Every password fell back to the literal ``change-me``
    (``${SIP_HUB_DB_PASSWORD:-change-me}``): PostgreSQL and RabbitMQ were created with it (and
    keep it in their volumes) and the one-shot ``migrate`` ran on it, though the API refuses
    it in production. The passwords are required (``${VAR:?...}``): compose stops, naming
    the variable, until they are set."""
    text = _text()
    assert "change-me" not in text
    for name in ("SIP_HUB_DB_PASSWORD", "SIP_HUB_BROKER_PASSWORD"):
        uses = re.findall(r"\$\{" + name + r"([^}]*)\}", text)
        assert uses and all(u.startswith(":?") for u in uses), (name, uses)


def test_the_compose_file_does_not_publish_the_brokers_management_ui_to_every_interface(
        ) -> None:
    """The broker carries the organisations' messages (personal data); its management UI was
    published as ``15672:15672``, on every interface of the host. It is bound to the host's
    loopback (reached over an SSH tunnel)."""
    services = yaml.safe_load(_text())["services"]
    ports = [str(p) for p in services["rabbitmq"].get("ports", [])]
    assert all(p.startswith("127.0.0.1:") for p in ports if "15672" in p), ports
    for name, service in services.items():
        if name != "api":  # (the API alone serves the network)
            assert all(str(p).startswith("127.0.0.1:") for p in service.get("ports", [])), name
