from tests.webapp.admin.support import admin_user, client, live_server  # noqa: F401  (fixtures)
