"""Who may publish and subscribe where: the fleet's topic ACL as per-user topic lists.

amqtt's ACL plugin matches ``+`` and ``#`` in the *allowed* topics but has no
per-user substitution (no ``%u``), so every agent gets its own entries here.
The same rules, written as Mosquitto ``pattern`` lines, are in
``broker.mosquitto``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fedmq.protocol.errors import ConfigError
from fedmq.protocol.topics import Topics, check_name

# amqtt files clients without a user name under this name; nobody may own it.
ANONYMOUS = "anonymous"


def password_file_users(path: str | Path) -> list[str]:
    """User names in a ``user:hash`` password file (amqtt's or Mosquitto's), in file order."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read password file {path}: {exc}") from exc
    users = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            users.append(line.split(":", 1)[0])
    return users


@dataclass(frozen=True)
class FleetAcl:
    """Aggregator users run the rounds; each agent and each trustee writes only its own topics;
    dashboards only read.

    | user       | publish                          | subscribe / receive        |
    |------------|----------------------------------|----------------------------|
    | aggregator | pubkey, round, metrics, notice/+ | update/+, status/+,        |
    |            | trustee/request, progress        | pubkey, round, progress,   |
    |            |                                  | trustee/reply/+            |
    | agent id   | update/<own id>, status/<own id> | pubkey, round, metrics,    |
    |            |                                  | notice/<own id>            |
    | trustee id | trustee/reply/<own id>           | update/+, pubkey, round,   |
    |            |                                  | trustee/request            |
    | dashboard  | nothing                          | pubkey, round, metrics,    |
    |            |                                  | progress, status/+         |

    Anyone else, including clients without a user name, may do nothing. The
    aggregator reads its own pubkey, round and progress back to notice (and
    replace) a retained copy it did not publish. A trustee (one share of a
    threshold Paillier key) reads every update to add up the sums it is asked to
    decrypt partially itself; it reads no notices, statuses or other trustees'
    replies. Agents never see a trustee topic, nor ``progress`` (it names the other
    devices). A dashboard (the fleet's live page) reads the retained topics, the
    metrics and the agents' liveness; it never reads an update, a notice or a
    trustee topic, and may not even leave a Last Will.
    """

    topics: Topics
    aggregator_users: tuple[str, ...]
    agents: tuple[str, ...]
    trustee_users: tuple[str, ...] = ()
    dashboard_users: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.aggregator_users:
            raise ConfigError("the topic ACL needs at least one aggregator user")
        for name in (*self.aggregator_users, *self.agents, *self.trustee_users,
                     *self.dashboard_users):
            check_name(name, "user name")
            if name == ANONYMOUS:
                raise ConfigError(f"{ANONYMOUS!r} cannot be a fleet user: amqtt files clients "
                                  "without a user name under it")
        roles = (("aggregator", self.aggregator_users), ("agent", self.agents),
                 ("trustee", self.trustee_users), ("dashboard", self.dashboard_users))
        for i, (role, group) in enumerate(roles):
            for other, others in roles[i + 1:]:
                both = sorted(set(group) & set(others))
                if both:
                    raise ConfigError(f"user(s) {', '.join(both)} cannot be both {role} "
                                      f"and {other}")
        for _role, group in roles:
            if len(set(group)) != len(group):
                raise ConfigError("a user name is listed twice in the topic ACL")

    @classmethod
    def from_users(cls, topics: Topics, aggregator_users: Iterable[str],
                   users: Iterable[str], trustee_users: Iterable[str] = (),
                   dashboard_users: Iterable[str] = ()) -> FleetAcl:
        """Every user that is not an aggregator, a trustee or a dashboard is an agent (e.g.
        all of a password file)."""
        aggregators, trustees = tuple(aggregator_users), tuple(trustee_users)
        dashboards = tuple(dashboard_users)
        others = {*aggregators, *trustees, *dashboards}
        return cls(topics, aggregators, tuple(u for u in users if u not in others),
                   trustees, dashboards)

    def broadcast(self) -> list[str]:
        """What the aggregator publishes for every agent to read."""
        t = self.topics
        return [t.pubkey, t.round, t.metrics]

    def aggregator_publish(self) -> list[str]:
        """The broadcasts, notices, trustee requests and the round's progress (retained,
        for dashboards only: it is not a broadcast)."""
        t = self.topics
        return [*self.broadcast(), t.notices_filter, t.trustee_request, t.progress]

    def aggregator_subscribe(self) -> list[str]:
        """Updates, statuses, trustee replies, and its own retained topics (to put back
        a copy it did not publish)."""
        t = self.topics
        return [t.updates_filter, t.status_filter, t.pubkey, t.round, t.trustee_replies_filter,
                t.progress]

    def agent_publish(self, agent_id: str) -> list[str]:
        return [self.topics.update(agent_id), self.topics.status(agent_id)]

    def agent_subscribe(self, agent_id: str) -> list[str]:
        """The broadcasts, and the notices to this agent only (they name its problems)."""
        return [*self.broadcast(), self.topics.notice(agent_id)]

    def trustee_publish(self, trustee_id: str) -> list[str]:
        """Its own reply topic only (the aggregator tells the replies apart by topic)."""
        return [self.topics.trustee_reply(trustee_id)]

    def trustee_subscribe(self) -> list[str]:
        """Every update (to add up the sums it decrypts itself), the key, the round and
        the requests; no notices, statuses, metrics or other trustees' replies."""
        t = self.topics
        return [t.updates_filter, t.pubkey, t.round, t.trustee_request]

    def dashboard_subscribe(self) -> list[str]:
        """What the fleet's live page shows: the retained key and round, the metrics, the
        round's progress and the agents' retained liveness. A dashboard publishes nothing;
        no update, notice or trustee topic."""
        t = self.topics
        return [t.pubkey, t.round, t.metrics, t.progress, t.status_filter]

    def publish_lists(self) -> dict[str, list[str]]:
        """Topics each user may publish to; a dashboard's list is empty (nothing)."""
        lists = {user: self.aggregator_publish() for user in self.aggregator_users}
        lists.update({agent: self.agent_publish(agent) for agent in self.agents})
        lists.update({user: self.trustee_publish(user) for user in self.trustee_users})
        lists.update({user: [] for user in self.dashboard_users})
        return lists

    def subscribe_lists(self) -> dict[str, list[str]]:
        lists = {user: self.aggregator_subscribe() for user in self.aggregator_users}
        lists.update({agent: self.agent_subscribe(agent) for agent in self.agents})
        lists.update({user: self.trustee_subscribe() for user in self.trustee_users})
        lists.update({user: self.dashboard_subscribe() for user in self.dashboard_users})
        return lists
