"""Property-based fuzzing of the server against its own OpenAPI schema (schemathesis): valid and invalid
bodies alike must never produce a 5xx, and every 4xx carries an error message."""

import pytest
from hypothesis import HealthCheck, settings

schemathesis = pytest.importorskip("schemathesis")

from reasonbudget.models import load_model  # noqa: E402
from reasonbudget.serve.app import create_app  # noqa: E402
from reasonbudget.serve.requests import ServeConfig  # noqa: E402

pytestmark = pytest.mark.slow

# Small generation limits keep each fuzzed request cheap; requests above them get a 400 like any other.
APP = create_app(load_model("smollm2-135m"), ServeConfig(default_max_tokens=8, max_tokens_limit=12, max_samples=2))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
schema.config.generation.update(modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])


@pytest.fixture(scope="module", autouse=True)
def engine_thread():
    APP.state.scheduler.start()  # the ASGI test client does not run the app's lifespan
    yield
    APP.state.scheduler.stop()


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors_and_clear_client_errors(case):
    response = case.call()
    assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text[:300]}"
    if 400 <= response.status_code < 500:
        assert response.json()["error"]["message"], response.text[:300]
