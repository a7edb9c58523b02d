from django.apps import AppConfig


class StreamingConfig(AppConfig):
    name = "streaming"
    verbose_name = "Chat streaming"

    def ready(self) -> None:
        from . import signals  # noqa: F401  (connects the receivers)
