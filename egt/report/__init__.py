"""The run report (Markdown with PNG plots)."""

from egt.report.build import stored_report, write_report

__all__ = ["stored_report", "write_report"]
