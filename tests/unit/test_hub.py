"""Channel membership and the fan-out decision, with members that record."""

from __future__ import annotations

from dataclasses import dataclass, field

from piewire.core.channels import channel_key
from piewire.core.hub import Hub


@dataclass
class FakeMember:
    conn_id: str
    notify_self: bool = False
    frames: list[bytes] = field(default_factory=list)

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)


ROOM = channel_key("K", "room")
OTHER = channel_key("K", "other")
ROOM_OF_K2 = channel_key("K2", "room")


def make_hub() -> Hub:
    return Hub()


def test_a_message_reaches_every_other_member_once() -> None:
    hub = make_hub()
    a, b, c = FakeMember("a"), FakeMember("b"), FakeMember("c")
    for member in (a, b, c):
        hub.join(ROOM, "K", "room", member)
    frame = b"\x81\x02hi"
    assert hub.deliver(ROOM, frame, sender="a") == 2
    assert a.frames == []
    assert b.frames == [frame]
    assert c.frames == [frame]


def test_the_same_frame_object_is_handed_to_every_member() -> None:
    hub = make_hub()
    members = [FakeMember(str(n)) for n in range(5)]
    for member in members:
        hub.join(ROOM, "K", "room", member)
    frame = b"\x81\x01x"
    hub.deliver(ROOM, frame, sender="")
    assert all(member.frames[0] is frame for member in members)


def test_notify_self_sender_gets_its_own_message_once() -> None:
    hub = make_hub()
    a = FakeMember("a", notify_self=True)
    b = FakeMember("b")
    hub.join(ROOM, "K", "room", a)
    hub.join(ROOM, "K", "room", b)
    assert hub.deliver(ROOM, b"m", sender="a") == 2
    assert a.frames == [b"m"]
    assert b.frames == [b"m"]


def test_notify_self_of_others_does_not_matter() -> None:
    hub = make_hub()
    a = FakeMember("a")
    b = FakeMember("b", notify_self=True)
    hub.join(ROOM, "K", "room", a)
    hub.join(ROOM, "K", "room", b)
    hub.deliver(ROOM, b"m", sender="a")
    assert a.frames == []
    assert b.frames == [b"m"]


def test_a_rest_publish_reaches_everyone() -> None:
    hub = make_hub()
    a = FakeMember("a")
    b = FakeMember("b", notify_self=True)
    hub.join(ROOM, "K", "room", a)
    hub.join(ROOM, "K", "room", b)
    assert hub.deliver(ROOM, b"m", sender="") == 2
    assert a.frames == b.frames == [b"m"]


def test_messages_stay_in_their_channel_and_key() -> None:
    hub = make_hub()
    room, other, foreign = FakeMember("a"), FakeMember("b"), FakeMember("c")
    hub.join(ROOM, "K", "room", room)
    hub.join(OTHER, "K", "other", other)
    hub.join(ROOM_OF_K2, "K2", "room", foreign)
    hub.deliver(ROOM, b"m", sender="")
    assert room.frames == [b"m"]
    assert other.frames == []
    assert foreign.frames == []


def test_delivery_to_a_channel_without_members_is_a_no_op() -> None:
    hub = make_hub()
    assert hub.deliver(ROOM, b"m", sender="") == 0
    assert hub.get(ROOM) is None
    assert hub.channel_count == 0


def test_order_is_kept_per_publisher() -> None:
    hub = make_hub()
    reader = FakeMember("r")
    hub.join(ROOM, "K", "room", reader)
    frames = [str(n).encode() for n in range(100)]
    for frame in frames:
        hub.deliver(ROOM, frame, sender="w")
    assert reader.frames == frames


def test_leave_tells_when_the_channel_emptied() -> None:
    hub = make_hub()
    a, b = FakeMember("a"), FakeMember("b")
    first = hub.join(ROOM, "K", "room", a)
    assert hub.join(ROOM, "K", "room", b) is first
    assert hub.leave(ROOM, a) is False
    assert hub.get(ROOM) is first
    assert hub.leave(ROOM, b) is True
    assert hub.get(ROOM) is None
    assert hub.join(ROOM, "K", "room", a) is not first


def test_leaving_twice_or_a_channel_never_joined_changes_nothing() -> None:
    hub = make_hub()
    a, b = FakeMember("a"), FakeMember("b")
    hub.join(ROOM, "K", "room", a)
    assert hub.leave(ROOM, b) is False
    assert hub.leave(OTHER, a) is False
    assert hub.channels_of("K") == {"room": 1}
    assert hub.leave(ROOM, a) is True
    assert hub.leave(ROOM, a) is False
    assert hub.channel_count == 0


def test_empty_channels_are_forgotten() -> None:
    hub = make_hub()
    members = [FakeMember(str(n)) for n in range(50)]
    for n, member in enumerate(members):
        cid = f"c{n}"
        hub.join(channel_key("K", cid), "K", cid, member)
    assert hub.channel_count == 50
    for n, member in enumerate(members):
        hub.leave(channel_key("K", f"c{n}"), member)
    assert hub.channel_count == 0
    assert hub.channels_of("K") == {}
    assert hub.counts() == {}


def test_joining_twice_keeps_one_membership() -> None:
    hub = make_hub()
    a = FakeMember("a")
    hub.join(ROOM, "K", "room", a)
    hub.join(ROOM, "K", "room", a)
    hub.deliver(ROOM, b"m", sender="")
    assert a.frames == [b"m"]
    assert hub.channels_of("K") == {"room": 1}


def test_counts_and_member_listings_per_key() -> None:
    hub = make_hub()
    a, b, c, d = (FakeMember(n) for n in "abcd")
    hub.join(ROOM, "K", "room", a)
    hub.join(ROOM, "K", "room", b)
    hub.join(OTHER, "K", "other", c)
    hub.join(ROOM_OF_K2, "K2", "room", d)
    assert hub.channels_of("K") == {"room": 2, "other": 1}
    assert hub.channels_of("K2") == {"room": 1}
    assert hub.channels_of("nobody") == {}
    assert {c.key for c in hub.channels()} == {ROOM, OTHER, ROOM_OF_K2}
    assert hub.counts() == {ROOM: 2, OTHER: 1, ROOM_OF_K2: 1}
    assert hub.channel_count == 3


def test_channel_listings_survive_leaves_while_iterating() -> None:
    hub = make_hub()
    members = [FakeMember(str(n)) for n in range(10)]
    for n, member in enumerate(members):
        hub.join(channel_key("K", f"c{n}"), "K", f"c{n}", member)
    for channel in hub.channels():
        for member in list(channel.members.values()):
            hub.leave(channel.key, member)
    assert hub.channel_count == 0


def test_channel_records_its_ids_and_presence_listeners() -> None:
    hub = make_hub()
    a, b = FakeMember("a"), FakeMember("b")
    channel = hub.join(ROOM, "K", "room", a)
    hub.join(ROOM, "K", "room", b)
    assert (channel.key, channel.api_key, channel.channel_id) == (ROOM, "K", "room")
    assert hub.get(ROOM) is channel
    channel.listeners[a.conn_id] = a
    channel.send_to_listeners(b"roster")
    assert a.frames == [b"roster"]
    assert b.frames == []
    hub.leave(ROOM, a)
    assert a.conn_id not in channel.listeners
