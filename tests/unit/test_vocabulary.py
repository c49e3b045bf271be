"""The model's words (model/vocabulary.py): enum members that are their plain strings."""

from __future__ import annotations

import json

import pytest

from tracekit.model.vocabulary import GIC_ROLES, PROBE_ROLES, Role, Value

pytestmark = pytest.mark.unit


def test_members_look_up_and_compare_as_the_plain_strings_events_carry() -> None:
    read = json.loads('{"role": "queue", "v": {"intid": 27}}')  # as RawEvent.from_json reads
    assert {Role.QUEUE: 1}.get(read["role"]) == 1
    assert {read["role"]: 1}.get(Role.QUEUE) == 1
    assert read["role"] == Role.QUEUE and hash(read["role"]) == hash(Role.QUEUE)
    assert read["v"].get(Value.INTID) == 27
    assert json.dumps({Value.INTID: Role.ACK}) == '{"intid": "ack"}'
    assert f"{Role.QUEUE}" == str(Role.QUEUE) == "queue"
    assert type(Role.QUEUE.value) is str and type(str(Role.QUEUE)) is str


def test_every_word_is_described_and_unique() -> None:
    for enum in (Role, Value):
        assert all(m.description for m in enum), enum
        assert len({m.value for m in enum}) == len(enum)
    assert Role("queue") is Role.QUEUE and Value("target_vcpu") is Value.TARGET_VCPU


def test_probe_and_gic_roles_split_the_roles() -> None:
    assert set(PROBE_ROLES) | set(GIC_ROLES) == set(Role)
    assert not set(PROBE_ROLES) & set(GIC_ROLES)
    assert [r.value for r in GIC_ROLES] == ["lr_write", "ack", "eoi", "sgi_generate"]
