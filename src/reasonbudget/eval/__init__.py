from reasonbudget.eval.report import summarize, wilson, write_report
from reasonbudget.eval.runner import SweepConfig, run_sweep

__all__ = ["SweepConfig", "run_sweep", "summarize", "wilson", "write_report"]
