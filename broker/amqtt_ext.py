"""fedmq's amqtt 0.12 plugins: a complete topic ACL and a Last Will check.

Only the embedded broker imports this module (amqtt is a gateway-only dependency).
The broker itself is ``broker.amqtt_broker.FedmqBroker``, the packet caps are in
``broker.amqtt_reader`` and the password check in ``broker.amqtt_auth``.
Each addition closes a gap found by reading amqtt's source:

- ``TopicAccessControlListPlugin`` already checks ``subscribe-acl`` and
  ``receive-acl``, but its ``Config`` dataclass only declares ``publish_acl``
  and the deprecated ``acl``, so the plugin-dictionary configuration cannot set
  a receive list. ``FleetAclPlugin`` declares all three. The receive check
  matters wherever a session outlives a change of who holds it (without a
  password file, a client that reconnects with another client's id and
  ``clean_session = false`` inherits that client's subscriptions).
- A Last Will is published when a client drops without any topic check, so an
  agent could leave a retained "round" behind. ``WillAclPlugin`` refuses the
  CONNECT instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from amqtt.errors import PluginInitError
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.plugins.topic_checking import TopicAccessControlListPlugin
from amqtt.session import Session

from fedmq.broker.acl import ANONYMOUS

log = logging.getLogger(__name__)

# Dotted paths for amqtt's ``plugins`` configuration dictionary.
ACL_PLUGIN = f"{__name__}.FleetAclPlugin"
WILL_PLUGIN = f"{__name__}.WillAclPlugin"


class FleetAclPlugin(TopicAccessControlListPlugin):
    """amqtt's own ACL plugin with every list it checks configurable."""

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        # amqtt allows every publish when the publish list is empty (compatibility
        # with hbmqtt); an ACL that allows everything must never pass silently.
        if not self.config.publish_acl or not self.config.subscribe_acl:
            raise PluginInitError("FleetAclPlugin needs non-empty publish and subscribe lists")

    @dataclass
    class Config:
        publish_acl: dict[str, list[str]] = field(default_factory=dict)
        subscribe_acl: dict[str, list[str]] = field(default_factory=dict)
        receive_acl: dict[str, list[str]] = field(default_factory=dict)


class WillAclPlugin(BaseAuthPlugin):
    """Refuse a CONNECT whose Last Will goes to a topic its user may not publish to."""

    async def authenticate(self, *, session: Session) -> bool | None:
        if not session.will_flag:
            return None  # no opinion: the other plugins decide
        user = session.username or ANONYMOUS
        allowed = self.config.publish_acl.get(user, [])
        topic = session.will_topic or ""
        if any(TopicAccessControlListPlugin.topic_ac(topic, a) for a in allowed):
            return None
        log.warning("refused %r (user %r): Last Will on %r is outside its publish ACL",
                    session.client_id, user, topic)
        return False

    @dataclass
    class Config:
        publish_acl: dict[str, list[str]] = field(default_factory=dict)
