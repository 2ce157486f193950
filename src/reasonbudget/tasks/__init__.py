from reasonbudget.tasks.base import TASKS, Problem, Task, get_task
from reasonbudget.tasks.extraction import extract_answer
from reasonbudget.tasks.grading import grade, grade_many

__all__ = ["TASKS", "Problem", "Task", "extract_answer", "get_task", "grade", "grade_many"]
