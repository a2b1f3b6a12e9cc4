"""Jobs built without ``__init__`` (``Job.of``, ``Job.calling``) are the jobs ``__init__`` builds."""

from __future__ import annotations

import dataclasses

import pytest

from bridge.model import Job, JobState

VALUES = (7, "acct", "+33612345678", "text", "SENDER", 2, 4, True, False, JobState.CLAIMED, 1, 10.0, 11.0,
          None, None, "an error", "mid@x", "reply@x", "marketing", None, None, "opted out (STOP)", "subject")


def test_of_is_the_constructor():
    built, made = Job.of(VALUES), Job(*VALUES)
    assert built == made and hash(built) == hash(made) and repr(built) == repr(made)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.state = JobState.SENT  # type: ignore[misc]


def test_of_needs_every_field():
    with pytest.raises(ValueError):
        Job.of(VALUES[:-1])


def test_calling_is_replace_and_leaves_the_job_alone():
    job = Job(*VALUES)
    called = job.calling("prov", "m2s-7-2")
    assert called == dataclasses.replace(job, state=JobState.CALLING, provider="prov", client_ref="m2s-7-2")
    assert (job.state, job.provider, job.client_ref) == (JobState.CLAIMED, None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        called.provider = "other"  # type: ignore[misc]
