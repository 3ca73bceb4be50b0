"""Running a recipe: the orchestrator (``pipeline``), one phase's epochs (``phase``), what a
checkpoint holds (``state``, ``checkpoint``), the run folder (``folder``), teachers,
coupled layers, runtime set-up, the sensitivity command, the report and its plots."""
