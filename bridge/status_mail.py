"""Every numbered status mail the bridge sends is built here (pure, no I/O).

- ``for_request``: a status about a mail, from the ``StatusRecipe`` intake prepared (for
  errors known before the commit, and inside the commit for credit, opt-outs and caps).
- ``for_acceptance``: the one status an evaluated request gets once the commit knows the
  outcome (104, 113, 125-127, or 100/101 when the account wants receipts), or None.
- ``for_job``: a job the dispatcher gave up on (122, 125).

All of them go through ``replies.compose_status``, which writes the headers.
"""

from __future__ import annotations

from bridge.config import Config
from bridge.model import Acceptance, Job, NewReply, StatusRecipe
from bridge.replies import compose_status


def for_request(
    recipe: StatusRecipe, code: int, note: str = "", details: dict[str, object] | None = None
) -> NewReply:
    """The status ``code`` about the mail ``recipe`` describes."""
    return compose_status(
        code=code,
        to=recipe.to,
        sender=recipe.sender,
        language=recipe.language,
        note=note,
        details=details or {},
        in_reply_to=recipe.in_reply_to,
        references=recipe.references,
        received=recipe.received,
        max_per_hour=recipe.max_per_hour,
    )


def for_acceptance(recipe: StatusRecipe | None, acceptance: Acceptance) -> NewReply | None:
    """The status mail an evaluated request gets after its commit, if any."""
    if recipe is None or acceptance.outcome == "duplicate":
        return None
    if acceptance.outcome == "insufficient_credit":
        return for_request(recipe, 104, "", {"used": acceptance.used, "available": acceptance.available})
    if acceptance.refused or (recipe.receipts and acceptance.job_ids):
        return for_request(recipe, acceptance.status, acceptance.note)
    return None


def for_job(job: Job, code: int, note: str, config: Config) -> NewReply | None:
    """The status mail for a job given up on, or None when its mail may not be answered."""
    if not job.reply_to:
        return None
    account = config.accounts.get(job.login)
    language = account.language if account else "fr"
    return compose_status(
        code=code,
        to=job.reply_to,
        sender=config.replies.sender,
        language=language,
        note=note,
        in_reply_to=job.message_id,
        received=[("Number" if language == "en" else "Numéro", job.number)],
        max_per_hour=config.replies.rate_per_hour,
    )
