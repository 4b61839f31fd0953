"""Fallback: which candidates of a profile are left once some backends refused a sandbox (pure).

A backend that refuses a provision in a way another may not (a quota refusal,
an outage after retries) tears down what it made and records ``rerouting``;
the control worker then routes the sandbox again among the candidates that
have not refused it, with the same rules as a create. A profile fixed to one
backend has no fallback.
"""

from __future__ import annotations

from collections.abc import Collection

from sandboxer.config.profile import Profile
from sandboxer.errors import Rejected

__all__ = ["has_fallback", "without_candidates"]


def has_fallback(profile: Profile, refused_by: Collection[str]) -> bool:
    """Whether a candidate is left after ``refused_by`` (the backend refusing now included)."""
    return profile.route is not None and any(
        candidate not in refused_by for candidate in profile.route.candidates
    )


def without_candidates(profile: Profile, refused_by: Collection[str]) -> Profile:
    """``profile`` routing only among the candidates that did not refuse; Rejected when none is."""
    if not refused_by:
        return profile
    if profile.route is None:
        raise Rejected(
            "no_route",
            f"{profile.id} is fixed to {profile.extension}, which refused; it has no fallback "
            "(give the profile a route with more candidates)",
        )
    left = [c for c in profile.route.candidates if c not in refused_by]
    if not left:
        raise Rejected("no_route", f"every candidate of {profile.id} refused")
    route = profile.route.model_copy(update={"candidates": left})
    return profile.model_copy(update={"route": route})
