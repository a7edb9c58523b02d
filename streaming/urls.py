"""The app's URLs; a site mounts them with `path("", include("streaming.urls"))` (or under a prefix).

Names are in the "streaming" namespace: `streaming:chat` (the chat page), `streaming:chat-stream`.
"""

from django.urls import path

from . import views

app_name = "streaming"

urlpatterns = [
    path("", views.chat_page, name="chat"),
    path("api/chat/stream", views.chat_stream, name="chat-stream"),
]
