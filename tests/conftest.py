import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def smollm():
    from reasonbudget.models import load_model

    return load_model("smollm2-135m")
