"""Demo cases: declared as data in ``demo_scenarios/cases/``, run against the live stack (UI-free)."""
