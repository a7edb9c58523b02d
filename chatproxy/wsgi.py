"""WSGI entry point, for management tooling only: streaming needs the ASGI application."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproxy.settings")

application = get_wsgi_application()
