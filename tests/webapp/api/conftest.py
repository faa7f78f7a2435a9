import pytest

from webapp.api.auth import create_token

CRON_SECRET = "cron-secret-for-tests-0123456789"


@pytest.fixture
def token(app):
    return create_token("tests")


@pytest.fixture
def auth(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def cron(app):
    app.config["CRON_SECRET"] = CRON_SECRET
    return {"X-Cron-Secret": CRON_SECRET}


@pytest.fixture
def client(app):
    return app.test_client()
