"""Tables and figures aggregated over runs."""
from flare.report.figures import relative_l2_figure
from flare.report.tables import collect_evaluations, relative_l2_table, write_tables

__all__ = ["collect_evaluations", "relative_l2_figure", "relative_l2_table", "write_tables"]
