from reasonbudget.tasks.extraction import extract_answer
from reasonbudget.tasks.grading import grade, grade_many

__all__ = ["extract_answer", "grade", "grade_many"]
