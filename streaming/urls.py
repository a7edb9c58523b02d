"""The app's URLs; a site mounts them with `path("", include("streaming.urls"))` (or under a prefix).

Names are in the "streaming" namespace: `streaming:chat` (the chat page; `streaming:conversation`, the
page on one saved conversation), `streaming:conversations` and `streaming:conversation-api` (the
page's saved conversations), `streaming:markdown` (answers' Markdown as safe HTML), `streaming:chat-stream` and
`streaming:responses-stream` (the session's streaming APIs), `streaming:api-keys` (the user's keys),
`streaming:usage` (the user's usage), `streaming:metrics` (Prometheus), and `streaming:v1-*` for
OpenAI's API under `v1/`.
"""

from django.urls import path, re_path

from . import conversation_views, key_views, markdown_views, metrics_views, usage_views, v1_views, views

app_name = "streaming"

urlpatterns = [
    path("", conversation_views.chat_page, name="chat"),
    path("c/<uuid:conversation_id>/", conversation_views.chat_page, name="conversation"),
    path("api/conversations", conversation_views.conversations, name="conversations"),
    path("api/conversations/<uuid:conversation_id>", conversation_views.conversation, name="conversation-api"),
    path("api/markdown", markdown_views.render, name="markdown"),
    path("api/chat/stream", views.chat_stream, name="chat-stream"),
    path("api/responses/stream", views.responses_stream, name="responses-stream"),
    path("keys/", key_views.api_keys_page, name="api-keys"),
    path("keys/<int:pk>/revoke", key_views.revoke_key, name="api-key-revoke"),
    path("usage/", usage_views.usage_page, name="usage"),
    path("metrics", metrics_views.metrics, name="metrics"),
    # OpenAI's API, for SDKs and tools with a personal API key (base_url: the site's /v1).
    path("v1/chat/completions", v1_views.chat_completions, name="v1-chat-completions"),
    path("v1/responses", v1_views.responses, name="v1-responses"),
    path("v1/models", v1_views.models, name="v1-models"),
    path("v1/models/<path:model_id>", v1_views.model, name="v1-model"),
    re_path(r"^v1(?:/(?P<path>.*))?$", v1_views.unknown_endpoint),
]
