"""The app's settings: the site's value where it sets one, else the app's own default."""

from streaming.conf import AppSettings, app_settings


def test_a_setting_the_site_leaves_out_takes_the_apps_default(settings):
    del settings.CHAT_MAX_TOKENS
    del settings.CHAT_KEEPALIVE_SECONDS
    assert app_settings.CHAT_MAX_TOKENS == AppSettings.CHAT_MAX_TOKENS == 1024
    assert app_settings.CHAT_KEEPALIVE_SECONDS == 15.0


def test_the_sites_value_wins_and_changes_apply_at_once(settings):
    settings.CHAT_MAX_TOKENS = 77
    assert app_settings.CHAT_MAX_TOKENS == 77
    settings.CHAT_MAX_TOKENS = 78
    assert app_settings.CHAT_MAX_TOKENS == 78


def test_without_a_key_the_demo_model_is_the_default_and_only_model(settings):
    for name in ("OPENAI_API_KEY", "CHAT_DEMO_MODE", "CHAT_DEFAULT_MODEL", "CHAT_ALLOWED_MODELS"):
        delattr(settings, name)
    assert app_settings.CHAT_DEMO_MODE is True
    assert app_settings.CHAT_DEFAULT_MODEL == "chatproxy-demo"
    assert app_settings.CHAT_ALLOWED_MODELS == ["chatproxy-demo"]


def test_with_a_key_the_default_model_is_openais(settings):
    for name in ("CHAT_DEMO_MODE", "CHAT_DEFAULT_MODEL", "CHAT_ALLOWED_MODELS"):
        delattr(settings, name)
    settings.OPENAI_API_KEY = "sk-test-not-a-real-key"
    assert app_settings.CHAT_DEMO_MODE is False
    assert app_settings.CHAT_ALLOWED_MODELS == [app_settings.CHAT_DEFAULT_MODEL] == ["gpt-4o-mini"]
