"""The composition root: the app gunicorn serves (`wsgi:app`, see gunicorn.conf.py) and
`flask --app wsgi ...` runs commands against, with the command groups of every process:
webapp's own, and the supervisor's (scheduler/cli.py), which webapp does not import."""
from scheduler.cli import supervisor_cli
from webapp import create_app

app = create_app()
app.cli.add_command(supervisor_cli)
