"""Payer seam: the interface a claim is sent through for adjudication.

A real payer integration (an insurer's claims API) implements ``Payer`` and
is passed to ``svc_billing.app.make_build``. The default payer adjudicates by
the plan rules that billing stores with the policy.
"""

from __future__ import annotations

from typing import Protocol

from svc_billing import domain


class Payer(Protocol):
    """Adjudicate claims, at once or later through RecordAdjudication."""

    async def submit(
        self, submission: domain.ClaimSubmission, policy: domain.PolicyTerms
    ) -> domain.AdjudicationResult | None:
        """Send one attempt of a claim.

        Args:
            submission: The claim as the payer receives it.
            policy: Billing's copy of the policy. A real payer checks its own
                records instead.

        Returns:
            The adjudication, or None when the payer will send it later
            (billing then records it through RecordAdjudication).

        Raises:
            mesh.runtime.errors.Unavailable: The payer cannot be reached; the
                claim stays submitted.
        """
        ...


class PlanRulesPayer:
    """Adjudicate at once by the plan's rules (domain.adjudicate_by_plan)."""

    async def submit(
        self, submission: domain.ClaimSubmission, policy: domain.PolicyTerms
    ) -> domain.AdjudicationResult | None:
        return domain.adjudicate_by_plan(submission, policy)
