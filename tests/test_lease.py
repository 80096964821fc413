"""The sweep lease's rules, on an in-memory Optuna study: who may take over a sweep, and when."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import optuna
import pytest

from imm.config import ConfigError
from orchestrator.sweep import lease as lease_mod
from orchestrator.sweep.lease import LEASE_ATTR, Lease, live_lease, refuse_if_held


@pytest.fixture
def study():
    return optuna.create_study(study_name="s", storage=optuna.storages.InMemoryStorage())


def held_by(study, **changes) -> dict:
    """A lease as a driver with these fields (default: this process, renewed now) would have written it."""
    record = {"id": "other", **lease_mod._process(os.getpid()), "renewed": time.time(), **changes}
    study.set_user_attr(LEASE_ATTR, record)
    return record


def test_a_live_driver_on_this_machine_is_refused_in_one_line(study):
    held_by(study)
    with pytest.raises(ConfigError, match=rf"^--resume: sweep 's' is being run by pid {os.getpid()} on "):
        refuse_if_held(study, "s")


def test_a_dead_driver_on_this_machine_is_taken_over_before_its_lease_expires(study):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    me = lease_mod._process(dead.pid)  # its host, PID namespace and start time, read while it lives
    dead.wait()
    held_by(study, **me)
    assert me["started"] is not None and live_lease(study) is None
    Lease(study, "s").acquire().release()
    assert study.user_attrs[LEASE_ATTR] is None


def test_a_reused_pid_is_not_taken_for_the_holder(study):
    held_by(study, started="1")  # this pid, but a process that started at another time
    assert live_lease(study) is None


def test_a_driver_on_another_machine_or_container_holds_until_its_heartbeat_stops(study, monkeypatch):
    monkeypatch.setenv("IMM_SWEEP_LEASE_S", "60")
    for elsewhere in ({"host": "gpu-node-7", "pid": 2**22 + 1}, {"pidns": "pid:[1]", "pid": 2**22 + 1}):
        held_by(study, **elsewhere, renewed=time.time() - 59)  # its pid means nothing here
        assert live_lease(study) is not None
        with pytest.raises(ConfigError, match=r"rerun after its lease expires \(within 60s\)$"):
            refuse_if_held(study, "s")
        held_by(study, **elsewhere, renewed=time.time() - 61)
        assert live_lease(study) is None


def test_a_lease_without_process_identity_is_judged_by_its_heartbeat_only(study):
    """Leases written before the identity fields existed (host and pid only) must not be taken from a live driver."""
    held_by(study, pidns=None, started=None, pid=2**22 + 1)
    assert live_lease(study) is not None
