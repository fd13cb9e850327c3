"""The paper's protocol and its reproduction: splits and scoring, the plan of cells, report, figures, paper tables."""
