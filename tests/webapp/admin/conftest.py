import pytest

from tests.webapp.admin.support import FAST_HASHES, _servers, admin_user, client, live_server  # noqa: F401  (fixtures)


@pytest.fixture(autouse=True)
def _fast_password_hashes(app):
    app.config["ARGON2_PROFILE"] = FAST_HASHES
