import pytest

from reasonbudget.serve.app import create_app
from reasonbudget.serve.background import serving
from reasonbudget.serve.requests import ServeConfig


@pytest.fixture(scope="module")
def server(smollm):
    """The embedded model served on loopback; yields (base URL, app)."""
    app = create_app(smollm, ServeConfig(default_max_tokens=48))
    with serving(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server[0], api_key="unused", max_retries=0, timeout=120)
