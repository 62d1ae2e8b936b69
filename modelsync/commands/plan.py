"""``modelsync plan``: what apply would do. Never writes the state, never calls the API."""

from __future__ import annotations

from dataclasses import dataclass

from modelsync.gcpause import gc_paused
from modelsync.plan import Plan, make_plan
from modelsync.settings import Settings


@dataclass(frozen=True)
class Planned:
    """A plan and where it was made: the state's location for the output."""

    plan: Plan
    state_location: str


def plan(settings: Settings) -> Planned:
    """Read the state without the lock and plan against it."""
    with gc_paused():  # the state's records and the plan: large, and without cycles
        backend = settings.open_state()
        state = backend.read()
        return Planned(make_plan(settings.manifest, state, settings.selection), backend.location)
