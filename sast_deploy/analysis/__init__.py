"""Stage 9, analysis: studies over methods and seeds, their reports, and the precision, robustness and mechanism measurements."""
