"""The paper's protocol and its reproduction. Modules, each importing only those listed before it:
paper (published numbers), protocol (splits, scoring), plan (settings, cells), results (a run folder's
files), cells (what a cell computes), document, tables, figures, report, runner (`bganhash reproduce`)."""
