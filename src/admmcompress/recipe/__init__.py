"""The YAML recipe: its schema (``schema``), rules built from the constraint registry
(``rules``), what each step of a progressive run compresses (``planning``) and how a target
rate is split over layers (``allocation``)."""
