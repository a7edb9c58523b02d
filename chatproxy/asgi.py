import gc
import os

from django.core.asgi import get_asgi_application

from chatproxy.request_threads import RequestThreads

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproxy.settings")

application = RequestThreads(get_asgi_application())

# Everything loaded so far (Django, the apps, the openai SDK: most of the process's objects) lives
# as long as the process: out of the collector's way, a full collection pauses every open stream
# for milliseconds instead of about a hundred.
gc.freeze()
