import pytest


@pytest.fixture(scope="module")
def testbed():
    """The testbed target on an engine, with a few hard problems and their prompts."""
    from reasonbudget.engine import Engine
    from reasonbudget.models import load_model
    from reasonbudget.tasks import get_task

    model = load_model("testbed-target")
    task = get_task("testbed:d=7")
    problems = task.problems(3)
    return Engine(model), problems, [task.prompt(model, p) for p in problems]
